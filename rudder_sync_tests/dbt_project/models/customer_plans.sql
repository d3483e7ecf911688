{{ config(materialized='ephemeral') }}
-- Ephemeral: inlined into other models, never a relation (a sync on it fails at load time).
select id, plan from {{ ref('customers') }}
