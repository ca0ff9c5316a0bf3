-- matches: one row per match, keyed by external_match_id, or by (home, away, date, age group) without one.
create table if not exists matches (
    id bigint generated always as identity primary key,
    external_match_id text,
    home_team text not null,
    away_team text not null,
    match_date date not null,
    match_time text,
    season text not null,
    age_group text not null,
    match_type text not null,
    division text,
    division_id integer,
    league text,
    home_score integer,
    away_score integer,
    match_status text,
    location text,
    notes text,
    source text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create unique index if not exists matches_external_match_id_key
    on matches (external_match_id) where external_match_id is not null;
create unique index if not exists matches_natural_key
    on matches (home_team, away_team, match_date, age_group) where external_match_id is null;

-- One atomic upsert for both stores: PostgresStore calls it over SQL, SupabaseStore through PostgREST's RPC.
-- Writes only when a column changed; returns 'created', 'updated' or 'skipped'.
create or replace function matchenv_upsert_match(m jsonb) returns text
language plpgsql as $$
declare
    r matches%rowtype := jsonb_populate_record(null::matches, m);
    outcome text;
begin
    if r.external_match_id is not null then
        insert into matches as t (external_match_id, home_team, away_team, match_date, match_time, season,
                                  age_group, match_type, division, division_id, league, home_score, away_score,
                                  match_status, location, notes, source)
        values (r.external_match_id, r.home_team, r.away_team, r.match_date, r.match_time, r.season, r.age_group,
                r.match_type, r.division, r.division_id, r.league, r.home_score, r.away_score, r.match_status,
                r.location, r.notes, r.source)
        on conflict (external_match_id) where external_match_id is not null do update set
            home_team = excluded.home_team, away_team = excluded.away_team, match_date = excluded.match_date,
            match_time = excluded.match_time, season = excluded.season, age_group = excluded.age_group,
            match_type = excluded.match_type, division = excluded.division, division_id = excluded.division_id,
            league = excluded.league, home_score = excluded.home_score, away_score = excluded.away_score,
            match_status = excluded.match_status, location = excluded.location, notes = excluded.notes,
            source = excluded.source, updated_at = now()
        where (t.home_team, t.away_team, t.match_date, t.match_time, t.season, t.age_group, t.match_type,
               t.division, t.division_id, t.league, t.home_score, t.away_score, t.match_status, t.location,
               t.notes, t.source)
          is distinct from
              (excluded.home_team, excluded.away_team, excluded.match_date, excluded.match_time, excluded.season,
               excluded.age_group, excluded.match_type, excluded.division, excluded.division_id, excluded.league,
               excluded.home_score, excluded.away_score, excluded.match_status, excluded.location, excluded.notes,
               excluded.source)
        returning case when t.xmax = 0 then 'created' else 'updated' end into outcome;
    else
        insert into matches as t (external_match_id, home_team, away_team, match_date, match_time, season,
                                  age_group, match_type, division, division_id, league, home_score, away_score,
                                  match_status, location, notes, source)
        values (null, r.home_team, r.away_team, r.match_date, r.match_time, r.season, r.age_group,
                r.match_type, r.division, r.division_id, r.league, r.home_score, r.away_score, r.match_status,
                r.location, r.notes, r.source)
        on conflict (home_team, away_team, match_date, age_group) where external_match_id is null do update set
            match_time = excluded.match_time, season = excluded.season, match_type = excluded.match_type,
            division = excluded.division, division_id = excluded.division_id, league = excluded.league,
            home_score = excluded.home_score, away_score = excluded.away_score,
            match_status = excluded.match_status, location = excluded.location, notes = excluded.notes,
            source = excluded.source, updated_at = now()
        where (t.match_time, t.season, t.match_type, t.division, t.division_id, t.league, t.home_score,
               t.away_score, t.match_status, t.location, t.notes, t.source)
          is distinct from
              (excluded.match_time, excluded.season, excluded.match_type, excluded.division, excluded.division_id,
               excluded.league, excluded.home_score, excluded.away_score, excluded.match_status, excluded.location,
               excluded.notes, excluded.source)
        returning case when t.xmax = 0 then 'created' else 'updated' end into outcome;
    end if;
    return coalesce(outcome, 'skipped');
end
$$;
