{{ config(enabled=false) }}
-- Disabled: not built (a sync on it fails at load time).
select * from {{ ref('customers') }}
