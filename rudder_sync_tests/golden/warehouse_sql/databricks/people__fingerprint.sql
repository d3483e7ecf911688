CREATE TABLE `rudder_sync`.`people__model` AS
SELECT
  m.*,
  CAST(m.`Customer Key` AS STRING) AS __rs_wpk,
  MD5(
    'identify|User ID|AnonId|email=E-mail|plan=Plan|nickname=Say "Hi"' || ',' || COALESCE(
      CAST(LENGTH(CAST(m.`User ID` AS STRING)) AS STRING) || ':' || CAST(m.`User ID` AS STRING),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m.`AnonId` AS STRING)) AS STRING) || ':' || CAST(m.`AnonId` AS STRING),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m.`E-mail` AS STRING)) AS STRING) || ':' || CAST(m.`E-mail` AS STRING),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m.`Plan` AS STRING)) AS STRING) || ':' || CAST(m.`Plan` AS STRING),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m.`Say "Hi"` AS STRING)) AS STRING) || ':' || CAST(m.`Say "Hi"` AS STRING),
      'N'
    )
  ) AS __rs_whash,
  CASE
    WHEN (
      (
        m.`User ID` IS NULL
        OR LOWER(CAST(m.`User ID` AS STRING)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_LIKE(
          REGEXP_REPLACE(CAST(m.`User ID` AS STRING), '\\\\[a-zA-Z0-9]*|"', ''),
          '[\\p{L}\\p{N}\\p{P}\\p{S}]'
        )
      )
      AND (
        m.`AnonId` IS NULL
        OR LOWER(CAST(m.`AnonId` AS STRING)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_LIKE(
          REGEXP_REPLACE(CAST(m.`AnonId` AS STRING), '\\\\[a-zA-Z0-9]*|"', ''),
          '[\\p{L}\\p{N}\\p{P}\\p{S}]'
        )
      )
    )
    THEN 1
    ELSE 0
  END AS __rs_suspect
FROM (
select *
from crm.people
where not is_test
) AS m
