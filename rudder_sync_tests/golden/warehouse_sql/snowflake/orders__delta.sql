CREATE TABLE "rudder_sync"."orders__delta" AS
WITH current_rows AS (
  SELECT
    __rs_wpk,
    __rs_whash
  FROM "rudder_sync"."orders__model"
  WHERE
    __rs_wpk IS NOT NULL
), repeated AS (
  SELECT
    __rs_wpk
  FROM current_rows
  GROUP BY
    __rs_wpk
  HAVING
    COUNT(*) > 1
), base AS (
  SELECT
    __rs_wpk,
    __rs_whash
  FROM "rudder_sync"."orders__snapshot"
  WHERE
    NOT __rs_deleted AND __rs_wpk IS NOT NULL
), held AS (
  SELECT
    __rs_wpk
  FROM "rudder_sync"."orders__pending"
  WHERE
    __rs_wpk IS NOT NULL
  UNION
  SELECT
    __rs_wpk
  FROM "rudder_sync"."orders__rejected_rows"
  WHERE
    __rs_wpk IS NOT NULL
)
SELECT
  COALESCE(c.__rs_wpk, b.__rs_wpk) AS __rs_wpk,
  c.__rs_wpk IS NULL AS __rs_removed
FROM current_rows AS c
FULL OUTER JOIN base AS b
  ON b.__rs_wpk = c.__rs_wpk
WHERE
  c.__rs_wpk IS NULL
  OR b.__rs_wpk IS NULL
  OR b.__rs_whash IS NULL
  OR c.__rs_whash <> b.__rs_whash
  OR COALESCE(c.__rs_wpk, b.__rs_wpk) IN (
    SELECT
      __rs_wpk
    FROM held
  )
UNION
SELECT
  __rs_wpk,
  FALSE AS __rs_removed
FROM repeated
