CREATE TABLE "rudder_sync"."people__model" AS
SELECT
  m.*,
  CAST(m."Customer Key" AS TEXT) AS __rs_wpk,
  CAST(HASHTEXTEXTENDED(
    'identify|User ID|AnonId|email=E-mail|plan=Plan|nickname=Say "Hi"' || ',' || COALESCE(
      CAST(LENGTH(CAST(m."User ID" AS TEXT)) AS TEXT) || ':' || CAST(m."User ID" AS TEXT),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."AnonId" AS TEXT)) AS TEXT) || ':' || CAST(m."AnonId" AS TEXT),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."E-mail" AS TEXT)) AS TEXT) || ':' || CAST(m."E-mail" AS TEXT),
      'N'
    ) || ',' || COALESCE(CAST(LENGTH(CAST(m."Plan" AS TEXT)) AS TEXT) || ':' || CAST(m."Plan" AS TEXT), 'N') || ',' || COALESCE(
      CAST(LENGTH(CAST(m."Say ""Hi""" AS TEXT)) AS TEXT) || ':' || CAST(m."Say ""Hi""" AS TEXT),
      'N'
    ),
    0
  ) AS TEXT) AS __rs_whash,
  CASE
    WHEN (
      (
        m."User ID" IS NULL
        OR LOWER(CAST(m."User ID" AS TEXT)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."User ID" AS TEXT), '\\[a-zA-Z0-9]*|"', '', 'g') ~ '[[:alnum:][:punct:]]'
      )
      AND (
        m."AnonId" IS NULL
        OR LOWER(CAST(m."AnonId" AS TEXT)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."AnonId" AS TEXT), '\\[a-zA-Z0-9]*|"', '', 'g') ~ '[[:alnum:][:punct:]]'
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
