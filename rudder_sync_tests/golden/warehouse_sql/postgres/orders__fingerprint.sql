CREATE TABLE "rudder_sync"."orders__model" AS
SELECT
  m.*,
  CAST(m."id" AS TEXT) AS __rs_wpk,
  CAST(HASHTEXTEXTENDED(
    'track|user_id|anon_id|email=email|plan=plan' || ',' || COALESCE(
      CAST(LENGTH(CAST(m."user_id" AS TEXT)) AS TEXT) || ':' || CAST(m."user_id" AS TEXT),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."anon_id" AS TEXT)) AS TEXT) || ':' || CAST(m."anon_id" AS TEXT),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."email" AS TEXT)) AS TEXT) || ':' || CAST(m."email" AS TEXT),
      'N'
    ) || ',' || COALESCE(CAST(LENGTH(CAST(m."plan" AS TEXT)) AS TEXT) || ':' || CAST(m."plan" AS TEXT), 'N'),
    0
  ) AS TEXT) AS __rs_whash,
  CASE
    WHEN (
      (
        m."user_id" IS NULL
        OR LOWER(CAST(m."user_id" AS TEXT)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."user_id" AS TEXT), '\\[a-zA-Z0-9]*|"', '', 'g') ~ '[[:alnum:][:punct:]]'
      )
      AND (
        m."anon_id" IS NULL
        OR LOWER(CAST(m."anon_id" AS TEXT)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."anon_id" AS TEXT), '\\[a-zA-Z0-9]*|"', '', 'g') ~ '[[:alnum:][:punct:]]'
      )
    )
    THEN 1
    ELSE 0
  END AS __rs_suspect
FROM (
select id, user_id, anon_id, email, plan, country, updated_at, event_id from users
) AS m
