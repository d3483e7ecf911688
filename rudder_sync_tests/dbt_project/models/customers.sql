-- The synced model: one row per customer, with the user ID RudderStack needs.
select id, 'u' || cast(id as varchar) as user_id, email, plan
from {{ ref('raw_customers') }}
