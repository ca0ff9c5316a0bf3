-- Batches: one call stores many matches in one transaction, in the order given, each through
-- matchenv_upsert_match (so a later copy in the same batch sees an earlier one). Returns one outcome per match,
-- in order. Any error fails the whole batch: the worker then stores its matches one by one to find the culprit.
create or replace function matchenv_upsert_matches(ms jsonb) returns text[]
language plpgsql as $$
declare
    m jsonb;
    outcomes text[] := '{}';
begin
    for m in select value from jsonb_array_elements(ms) loop
        outcomes := outcomes || matchenv_upsert_match(m);
    end loop;
    return outcomes;
end
$$;

revoke execute on function matchenv_upsert_matches(jsonb) from public;

do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke execute on function matchenv_upsert_matches(jsonb) from %I', role_name);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        execute 'grant execute on function matchenv_upsert_matches(jsonb) to service_role';
    end if;
end
$$;
