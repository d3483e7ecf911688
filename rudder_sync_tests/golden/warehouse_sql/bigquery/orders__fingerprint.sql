CREATE TABLE `rudder_sync`.`orders__model` AS
SELECT
  m.*,
  CAST(m.`id` AS STRING) AS __rs_wpk,
  TO_HEX(
    MD5(
      'track|user_id|anon_id|email=email|plan=plan' || ',' || COALESCE(
        CAST(LENGTH(CAST(m.`user_id` AS STRING)) AS STRING) || ':' || CAST(m.`user_id` AS STRING),
        'N'
      ) || ',' || COALESCE(
        CAST(LENGTH(CAST(m.`anon_id` AS STRING)) AS STRING) || ':' || CAST(m.`anon_id` AS STRING),
        'N'
      ) || ',' || COALESCE(
        CAST(LENGTH(CAST(m.`email` AS STRING)) AS STRING) || ':' || CAST(m.`email` AS STRING),
        'N'
      ) || ',' || COALESCE(
        CAST(LENGTH(CAST(m.`plan` AS STRING)) AS STRING) || ':' || CAST(m.`plan` AS STRING),
        'N'
      )
    )
  ) AS __rs_whash,
  CASE
    WHEN (
      (
        m.`user_id` IS NULL
        OR LOWER(CAST(m.`user_id` AS STRING)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_CONTAINS(
          REGEXP_REPLACE(CAST(m.`user_id` AS STRING), '\\\\[a-zA-Z0-9]*|"', ''),
          '[\\p{L}\\p{N}\\p{P}\\p{S}]'
        )
      )
      AND (
        m.`anon_id` IS NULL
        OR LOWER(CAST(m.`anon_id` AS STRING)) IN ('null', 'nan', 'infinity', '-infinity')
        OR NOT REGEXP_CONTAINS(
          REGEXP_REPLACE(CAST(m.`anon_id` AS STRING), '\\\\[a-zA-Z0-9]*|"', ''),
          '[\\p{L}\\p{N}\\p{P}\\p{S}]'
        )
      )
    )
    THEN 1
    ELSE 0
  END AS __rs_suspect
FROM (
select id, user_id, anon_id, email, plan, country, updated_at, event_id from users
) AS m
