-- Ordering: each row remembers when the publisher read the data it holds (scraped_at, from the message header
-- x-matchenv-scraped-at). The upsert never replaces a row with data stamped older than what it holds; unstamped
-- messages (the existing protocol-1 producers) keep last-writer-wins.
alter table matches add column if not exists scraped_at timestamptz;

create or replace function matchenv_upsert_match(m jsonb) returns text
language plpgsql as $$
declare
    r matches%rowtype := jsonb_populate_record(null::matches, m);
    outcome text;
begin
    if r.external_match_id is not null then
        insert into matches as t (external_match_id, home_team, away_team, match_date, match_time, season,
                                  age_group, match_type, division, division_id, league, home_score, away_score,
                                  match_status, location, notes, source, scraped_at)
        values (r.external_match_id, r.home_team, r.away_team, r.match_date, r.match_time, r.season, r.age_group,
                r.match_type, r.division, r.division_id, r.league, r.home_score, r.away_score, r.match_status,
                r.location, r.notes, r.source, r.scraped_at)
        on conflict (external_match_id) where external_match_id is not null do update set
            home_team = excluded.home_team, away_team = excluded.away_team, match_date = excluded.match_date,
            match_time = excluded.match_time, season = excluded.season, age_group = excluded.age_group,
            match_type = excluded.match_type, division = excluded.division, division_id = excluded.division_id,
            league = excluded.league, home_score = excluded.home_score, away_score = excluded.away_score,
            match_status = excluded.match_status, location = excluded.location, notes = excluded.notes,
            source = excluded.source, scraped_at = coalesce(excluded.scraped_at, t.scraped_at), updated_at = now()
        where (excluded.scraped_at is null or t.scraped_at is null or excluded.scraped_at >= t.scraped_at)
          and (t.home_team, t.away_team, t.match_date, t.match_time, t.season, t.age_group, t.match_type,
               t.division, t.division_id, t.league, t.home_score, t.away_score, t.match_status, t.location,
               t.notes, t.source)
          is distinct from
              (excluded.home_team, excluded.away_team, excluded.match_date, excluded.match_time, excluded.season,
               excluded.age_group, excluded.match_type, excluded.division, excluded.division_id, excluded.league,
               excluded.home_score, excluded.away_score, excluded.match_status, excluded.location, excluded.notes,
               excluded.source)
        returning case when t.xmax = 0 then 'created' else 'updated' end into outcome;
        if outcome is null and r.scraped_at is not null then
            -- the same data, seen again later: remember the newer stamp, so an older message cannot win after it
            update matches set scraped_at = r.scraped_at
            where external_match_id = r.external_match_id and (scraped_at is null or scraped_at < r.scraped_at);
        end if;
    else
        insert into matches as t (external_match_id, home_team, away_team, match_date, match_time, season,
                                  age_group, match_type, division, division_id, league, home_score, away_score,
                                  match_status, location, notes, source, scraped_at)
        values (null, r.home_team, r.away_team, r.match_date, r.match_time, r.season, r.age_group,
                r.match_type, r.division, r.division_id, r.league, r.home_score, r.away_score, r.match_status,
                r.location, r.notes, r.source, r.scraped_at)
        on conflict (home_team, away_team, match_date, age_group) where external_match_id is null do update set
            match_time = excluded.match_time, season = excluded.season, match_type = excluded.match_type,
            division = excluded.division, division_id = excluded.division_id, league = excluded.league,
            home_score = excluded.home_score, away_score = excluded.away_score,
            match_status = excluded.match_status, location = excluded.location, notes = excluded.notes,
            source = excluded.source, scraped_at = coalesce(excluded.scraped_at, t.scraped_at), updated_at = now()
        where (excluded.scraped_at is null or t.scraped_at is null or excluded.scraped_at >= t.scraped_at)
          and (t.match_time, t.season, t.match_type, t.division, t.division_id, t.league, t.home_score,
               t.away_score, t.match_status, t.location, t.notes, t.source)
          is distinct from
              (excluded.match_time, excluded.season, excluded.match_type, excluded.division, excluded.division_id,
               excluded.league, excluded.home_score, excluded.away_score, excluded.match_status, excluded.location,
               excluded.notes, excluded.source)
        returning case when t.xmax = 0 then 'created' else 'updated' end into outcome;
        if outcome is null and r.scraped_at is not null then
            update matches set scraped_at = r.scraped_at
            where external_match_id is null and home_team = r.home_team and away_team = r.away_team
              and match_date = r.match_date and age_group = r.age_group
              and (scraped_at is null or scraped_at < r.scraped_at);
        end if;
    end if;
    return coalesce(outcome, 'skipped');
end
$$;
