CREATE TABLE "rudder_sync"."orders__model" AS
SELECT
  m.*,
  CAST(m."id" AS VARCHAR) AS __rs_wpk,
  MD5(
    'track|user_id|anon_id|email=email|plan=plan' || ',' || COALESCE(
      CAST(LENGTH(CAST(m."user_id" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."user_id" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."anon_id" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."anon_id" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."email" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."email" AS VARCHAR),
      'N'
    ) || ',' || COALESCE(
      CAST(LENGTH(CAST(m."plan" AS VARCHAR)) AS VARCHAR) || ':' || CAST(m."plan" AS VARCHAR),
      'N'
    )
  ) AS __rs_whash,
  CASE
    WHEN (
      (
        m."user_id" IS NULL
        OR LOWER(CAST(m."user_id" AS VARCHAR)) IN ('null', 'nan', 'infinity', '-infinity')
        OR REGEXP_INSTR(
          REGEXP_REPLACE(CAST(m."user_id" AS VARCHAR), '\\\\[a-zA-Z0-9]*|"', ''),
          '[[:alnum:][:punct:]]'
        ) = 0
      )
      AND (
        m."anon_id" IS NULL
        OR LOWER(CAST(m."anon_id" AS VARCHAR)) IN ('null', 'nan', 'infinity', '-infinity')
        OR REGEXP_INSTR(
          REGEXP_REPLACE(CAST(m."anon_id" AS VARCHAR), '\\\\[a-zA-Z0-9]*|"', ''),
          '[[:alnum:][:punct:]]'
        ) = 0
      )
    )
    THEN 1
    ELSE 0
  END AS __rs_suspect
FROM (
select id, user_id, anon_id, email, plan, country, updated_at, event_id from users
) AS m
