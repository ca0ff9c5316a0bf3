-- Supabase exposes every table and function of the public schema to its 'anon' and 'authenticated' roles (the
-- public anon key). The workers write with the service role; nobody else may read matches or call the upsert.
-- On a plain PostgreSQL without those roles only the revoke from PUBLIC applies.
alter table matches enable row level security;
revoke execute on function matchenv_upsert_match(jsonb) from public;

do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke all on table matches from %I', role_name);
            execute format('revoke execute on function matchenv_upsert_match(jsonb) from %I', role_name);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        execute 'grant select, insert, update on table matches to service_role';
        execute 'grant execute on function matchenv_upsert_match(jsonb) to service_role';
    end if;
end
$$;
