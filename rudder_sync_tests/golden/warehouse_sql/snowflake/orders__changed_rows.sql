SELECT
  m.*
FROM "rudder_sync"."orders__model" AS m
WHERE
  m.__rs_wpk IS NULL
  OR m.__rs_wpk IN (
    SELECT
      __rs_wpk
    FROM "rudder_sync"."orders__delta"
    WHERE
      NOT __rs_removed
  )
