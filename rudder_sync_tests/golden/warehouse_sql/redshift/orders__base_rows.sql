SELECT
  s.__rs_pk,
  s.__rs_hash,
  s.__rs_version,
  s.__rs_deleted,
  s.__rs_user_id,
  s.__rs_anonymous_id,
  CAST(NULL AS VARCHAR(65535)) AS __rs_props,
  s.__rs_committed_at
FROM "rudder_sync"."orders__snapshot" AS s
JOIN __rs_keys AS k
  ON k.__rs_pk = s.__rs_pk
UNION ALL
SELECT
  s.__rs_pk,
  s.__rs_hash,
  s.__rs_version,
  s.__rs_deleted,
  s.__rs_user_id,
  s.__rs_anonymous_id,
  s.__rs_props,
  s.__rs_committed_at
FROM "rudder_sync"."orders__snapshot" AS s
WHERE
  NOT s.__rs_deleted
  AND s.__rs_wpk IN (
    SELECT
      __rs_wpk
    FROM "rudder_sync"."orders__delta"
    WHERE
      __rs_removed
  )
  AND NOT s.__rs_pk IN (
    SELECT
      __rs_pk
    FROM __rs_keys
  )
UNION ALL
SELECT
  s.__rs_pk,
  s.__rs_hash,
  s.__rs_version,
  s.__rs_deleted,
  s.__rs_user_id,
  s.__rs_anonymous_id,
  s.__rs_props,
  s.__rs_committed_at
FROM "rudder_sync"."orders__snapshot" AS s
WHERE
  NOT s.__rs_deleted
  AND s.__rs_wpk IS NULL
  AND NOT s.__rs_pk IN (
    SELECT
      __rs_pk
    FROM __rs_keys
  )
