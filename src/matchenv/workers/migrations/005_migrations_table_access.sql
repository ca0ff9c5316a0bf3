-- The table of applied migrations lies in the public schema too: Supabase's 'anon' and 'authenticated' roles
-- must neither read nor write it (row-level security on, their grants taken back).
alter table matchenv_schema_migrations enable row level security;
revoke all on table matchenv_schema_migrations from public;

do $$
declare
    role_name text;
begin
    foreach role_name in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = role_name) then
            execute format('revoke all on table matchenv_schema_migrations from %I', role_name);
        end if;
    end loop;
end
$$;
