CREATE TABLE "rudder_sync"."people__model" AS
SELECT
  m.*,
  CAST(m."Customer Key" AS VARCHAR(65535)) AS __rs_wpk,
  MD5(
    'identify|User ID|AnonId|email=E-mail|plan=Plan|nickname=Say "Hi"' || ',' || COALESCE(
      CAST(LENGTH(CAST(m."User ID" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."User ID" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."AnonId" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."AnonId" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."E-mail" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."E-mail" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."Plan" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."Plan" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."Say ""Hi""" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."Say ""Hi""" AS VARCHAR(65535)),
      'N'
    )
  ) AS __rs_whash,
  CASE
    WHEN (
      (
        m."User ID" IS NULL
        OR LOWER(CAST(m."User ID" AS VARCHAR(65535))) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."User ID" AS VARCHAR(65535)), '\\\\[a-zA-Z0-9]*|"', '') ~ '[[:alnum:][:punct:]]'
      )
      AND (
        m."AnonId" IS NULL
        OR LOWER(CAST(m."AnonId" AS VARCHAR(65535))) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."AnonId" AS VARCHAR(65535)), '\\\\[a-zA-Z0-9]*|"', '') ~ '[[:alnum:][:punct:]]'
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
