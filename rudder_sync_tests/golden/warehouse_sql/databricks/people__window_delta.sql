CREATE TABLE `rudder_sync`.`people__delta` AS
WITH current_keys AS (
  SELECT
    __rs_wpk,
    MIN(__rs_whash) AS __rs_whash,
    COUNT(*) AS __rs_rows,
    MAX(__rs_suspect) AS __rs_suspect
  FROM `rudder_sync`.`people__w_2024_01_02`
  WHERE
    __rs_wpk IS NOT NULL
  GROUP BY
    __rs_wpk
), previous_keys AS (
  SELECT
    __rs_wpk,
    MIN(__rs_whash) AS __rs_whash,
    COUNT(*) AS __rs_rows,
    MAX(__rs_suspect) AS __rs_suspect
  FROM `rudder_sync`.`people__w_2024_01_01`
  WHERE
    __rs_wpk IS NOT NULL
  GROUP BY
    __rs_wpk
)
SELECT
  COALESCE(c.__rs_wpk, p.__rs_wpk) AS __rs_wpk
FROM current_keys AS c
FULL OUTER JOIN previous_keys AS p
  ON p.__rs_wpk = c.__rs_wpk
WHERE
  c.__rs_wpk IS NULL
  OR p.__rs_wpk IS NULL
  OR c.__rs_whash <> p.__rs_whash
  OR c.__rs_rows > 1
  OR p.__rs_rows > 1
  OR c.__rs_suspect = 1
  OR p.__rs_suspect = 1
