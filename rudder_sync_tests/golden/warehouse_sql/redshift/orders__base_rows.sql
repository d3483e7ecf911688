SELECT
  s.__rs_pk,
  s.__rs_hash,
  s.__rs_version,
  s.__rs_deleted,
  s.__rs_user_id,
  s.__rs_anonymous_id,
  CASE WHEN k.__rs_pk IS NULL THEN s.__rs_props END AS __rs_props,
  s.__rs_committed_at
FROM "rudder_sync"."orders__snapshot" AS s
LEFT JOIN __rs_keys AS k
  ON k.__rs_pk = s.__rs_pk
WHERE
  k.__rs_pk IS NOT NULL
  OR (
    NOT s.__rs_deleted
    AND (
      s.__rs_wpk IS NULL
      OR s.__rs_wpk IN (
        SELECT
          __rs_wpk
        FROM "rudder_sync"."orders__delta"
        WHERE
          __rs_removed
      )
    )
  )
