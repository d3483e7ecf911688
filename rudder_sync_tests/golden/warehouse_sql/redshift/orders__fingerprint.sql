CREATE TABLE "rudder_sync"."orders__model" AS
SELECT
  m.*,
  CAST(m."id" AS VARCHAR(65535)) AS __rs_wpk,
  MD5(
    'track|user_id|anon_id|email=email|plan=plan' || ',' || COALESCE(
      CAST(LENGTH(CAST(m."user_id" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."user_id" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."anon_id" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."anon_id" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."email" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."email" AS VARCHAR(65535)),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."plan" AS VARCHAR(65535))) AS VARCHAR(65535)) || ':' || CAST(m."plan" AS VARCHAR(65535)),
      'N'
    )
  ) AS __rs_whash,
  CASE
    WHEN (
      (
        m."user_id" IS NULL
        OR LOWER(CAST(m."user_id" AS VARCHAR(65535))) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."user_id" AS VARCHAR(65535)), '\\\\[a-zA-Z0-9]*|"', '') ~ '[[:alnum:][:punct:]]'
      )
      AND (
        m."anon_id" IS NULL
        OR LOWER(CAST(m."anon_id" AS VARCHAR(65535))) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_REPLACE(CAST(m."anon_id" AS VARCHAR(65535)), '\\\\[a-zA-Z0-9]*|"', '') ~ '[[:alnum:][:punct:]]'
      )
    )
    THEN 1
    ELSE 0
  END AS __rs_suspect
FROM (
select id, user_id, anon_id, email, plan, country, updated_at, event_id from users
) AS m
