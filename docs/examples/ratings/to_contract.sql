-- A ratings log (MovieLens' users.dat, movies.dat, ratings.dat) as the contract's raw tables
-- (docs/schema.md): one view per table. DuckDB SQL; run by to_contract.py, which sets the variable
-- `export` (the folder of the .dat files) and writes each view to raw/<table>/ as Parquet.
-- friendships and blocks are left out: a ratings log has no social graph, and both tables are optional.

CREATE VIEW ml_users AS
SELECT * FROM read_csv(getvariable('export') || '/users.dat', delim = '::', header = false,
    columns = {'user_id': 'BIGINT', 'gender': 'VARCHAR', 'age_group': 'INTEGER', 'occupation': 'INTEGER',
               'zip': 'VARCHAR'});

CREATE VIEW ml_movies AS
SELECT * FROM read_csv(getvariable('export') || '/movies.dat', delim = '::', header = false, quote = '',
    columns = {'movie_id': 'BIGINT', 'title': 'VARCHAR', 'genres': 'VARCHAR'});

CREATE VIEW ml_ratings AS
SELECT user_id, movie_id, rating, to_timestamp(ts) AS rated_at
FROM read_csv(getvariable('export') || '/ratings.dat', delim = '::', header = false,
    columns = {'user_id': 'BIGINT', 'movie_id': 'BIGINT', 'rating': 'INTEGER', 'ts': 'BIGINT'});

-- The items' publisher: every film is a post by one catalog account (id 0), public to all.
CREATE MACRO catalog_id() AS 0::BIGINT;

-- users: the age group's midpoint as age, the zip code's first 3 digits as city (a region), the
-- occupation as work; joined a day before their first rating (no event precedes it; without ratings, a
-- day before the log starts).
CREATE VIEW users AS
SELECT u.user_id,
       CASE u.age_group WHEN 1 THEN 16 WHEN 18 THEN 21 WHEN 25 THEN 30 WHEN 35 THEN 40 WHEN 45 THEN 47
                        WHEN 50 THEN 53 ELSE 60 END::SMALLINT AS age,
       CASE u.gender WHEN 'F' THEN 'female' WHEN 'M' THEN 'male' ELSE 'unknown' END AS gender,
       left(u.zip, 3) AS city,
       NULL::VARCHAR AS school,
       'occupation-' || u.occupation AS work,
       coalesce(min(r.rated_at), (SELECT min(rated_at) FROM ml_ratings)) - INTERVAL 1 DAY AS joined_at
FROM ml_users u LEFT JOIN ml_ratings r USING (user_id)
GROUP BY ALL
UNION ALL
SELECT catalog_id(), NULL, 'unknown', NULL, NULL, 'catalog', (SELECT min(rated_at) FROM ml_ratings) - INTERVAL 2 DAY;

-- posts: a film, created a day before its first rating (an impression never precedes its post; unrated,
-- a day before the log starts); the title is the text, the genres are the topics.
CREATE VIEW posts AS
SELECT m.movie_id AS post_id,
       catalog_id() AS author_id,
       coalesce(min(r.rated_at), (SELECT min(rated_at) FROM ml_ratings)) - INTERVAL 1 DAY AS created_at,
       'text' AS modality,
       m.title AS text,
       string_split(m.genres, '|') AS topics,
       'public' AS visibility,
       NULL::TIMESTAMPTZ AS deleted_at,
       NULL::FLOAT AS media_duration_s,
       NULL::FLOAT[] AS media_vector
FROM ml_movies m LEFT JOIN ml_ratings r USING (movie_id)
GROUP BY ALL;

-- impressions: one per rating (the user was shown the film and rated it); a request is a user's hour,
-- the position the order within it.
CREATE VIEW impressions AS
SELECT 'r' || user_id || '-' || movie_id AS impression_id,
       user_id || '@' || strftime(date_trunc('hour', rated_at), '%Y%m%d%H') AS request_id,
       user_id AS viewer_id,
       movie_id AS post_id,
       rated_at AS served_at,
       (row_number() OVER (PARTITION BY user_id, date_trunc('hour', rated_at) ORDER BY rated_at, movie_id) - 1)::INTEGER
           AS position
FROM ml_ratings;

-- engagements: 4–5 stars is a like, 1–2 stars a hide ("see fewer"); 3 stars is shown-not-engaged. A
-- second after the impression, naming it. No views: the log has no dwell (dwell and skip are not trained).
CREATE VIEW engagements AS
SELECT CASE WHEN rating >= 4 THEN 'like-' ELSE 'hide-' END || movie_id AS event_id,
       user_id AS viewer_id,
       movie_id AS post_id,
       'r' || user_id || '-' || movie_id AS impression_id,
       CASE WHEN rating >= 4 THEN 'like' ELSE 'hide' END AS type,
       rated_at + INTERVAL 1 SECOND AS at,
       NULL::INTEGER AS dwell_ms
FROM ml_ratings
WHERE rating >= 4 OR rating <= 2;
