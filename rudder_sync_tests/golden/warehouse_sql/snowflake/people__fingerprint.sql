CREATE TABLE "rudder_sync"."people__model" AS
SELECT
  m.*,
  CAST(m."Customer Key" AS VARCHAR) AS __rs_wpk,
  MD5(
    'identify|User ID|AnonId|email=E-mail|plan=Plan|nickname=Say "Hi"' || ',' || COALESCE(
      CAST(LENGTH(CAST(m."User ID" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."User ID" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."AnonId" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."AnonId" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."E-mail" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."E-mail" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."Plan" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."Plan" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."Say ""Hi""" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."Say ""Hi""" AS VARCHAR),
      'N'
    )
  ) AS __rs_whash,
  CASE
    WHEN (
      (
        m."User ID" IS NULL
        OR LOWER(CAST(m."User ID" AS VARCHAR)) IN ('null', 'nan', 'infinity', '-infinity')
        OR REGEXP_INSTR(
          REGEXP_REPLACE(CAST(m."User ID" AS VARCHAR), '\\\\[a-zA-Z0-9]*|"', ''),
          '[[:alnum:][:punct:]]'
        ) = 0
      )
      AND (
        m."AnonId" IS NULL
        OR LOWER(CAST(m."AnonId" AS VARCHAR)) IN ('null', 'nan', 'infinity', '-infinity')
        OR REGEXP_INSTR(
          REGEXP_REPLACE(CAST(m."AnonId" AS VARCHAR), '\\\\[a-zA-Z0-9]*|"', ''),
          '[[:alnum:][:punct:]]'
        ) = 0
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
