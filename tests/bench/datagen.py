"""A benchmark database of realistic rows, generated server-side in SQL so that loading is fast.

``pgbench`` filler compresses 34:1 and would flatter any compressor; real tables are nearer 2-3:1.
These rows mix what real ones hold: names and cities from short lists, free text drawn from a
pseudo-word vocabulary with a Zipf-like skew (common words are common, as in prose), uuids, random
amounts, timestamps, inet addresses and jsonb documents. The whole load is ``INSERT ... SELECT`` over
``generate_series``; the vocabulary travels as array literals in the SQL, so nothing is copied in.

``build(pg, database, dump_mb)`` creates the database and loads roughly ``dump_mb`` MB of plain-format
dump (the per-row sizes below were measured on PostgreSQL 15; the real size is reported by the caller).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

#: Measured plain-dump bytes per row (COPY text) of each table, to size a load to a target dump.
ROW_BYTES = {"customers": 298, "orders": 385, "events": 272}
#: Share of the dump each table gets.
SHARE = {"customers": 0.15, "orders": 0.40, "events": 0.45}
#: Rows per INSERT statement: small enough to spread over the loader sessions, big enough to amortise.
CHUNK_ROWS = 100_000


def _split(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


FIRST_NAMES = _split(
    "Ana Bruno Carla Daniel Eduarda Felipe Gabriela Heitor Isabela João Karina Lucas Mariana Nicolas "
    "Olivia Pedro Rafaela Samuel Tatiana Ulisses Valentina William Xavier Yasmin Zoe Alice Bernardo "
    "Cecília Davi Elisa Fernando Giovanna Henrique Ingrid Joaquim Laura Miguel Natália Otávio Paula "
    "Ricardo Sofia Thiago Vitória Arthur Beatriz Caio Helena Lorenzo Manuela Emma Liam Noah Mia Lucas "
    "Hannah Yuki Chen Priya Omar Fatima Ivan Olga Kwame Amara Diego Lucía Mateo Camila"
)
LAST_NAMES = _split(
    "Silva Santos Oliveira Souza Rodrigues Ferreira Alves Pereira Lima Gomes Costa Ribeiro Martins "
    "Carvalho Almeida Lopes Soares Fernandes Vieira Barbosa Rocha Dias Nascimento Andrade Moreira Nunes "
    "Marques Machado Mendes Freitas Cardoso Ramos Gonçalves Santana Teixeira Smith Johnson Williams "
    "Brown Jones Garcia Miller Davis Müller Schmidt Rossi Russo Dubois Tanaka Suzuki Kim Nguyen Patel"
)
CITIES = _split(
    "São Paulo|Rio de Janeiro|Belo Horizonte|Porto Alegre|Curitiba|Recife|Salvador|Fortaleza|Manaus|"
    "Brasília|Campinas|Florianópolis|Lisboa|Porto|Madrid|Barcelona|Buenos Aires|Santiago|Lima|Bogotá|"
    "Ciudad de México|New York|Chicago|Toronto|London|Berlin|Paris|Milano|Tokyo|Singapore",
    "|",
)
COUNTRIES = _split("BR BR BR BR BR PT ES AR CL PE CO MX US US CA GB DE FR IT JP SG")
STREETS = _split("Rua Avenida Travessa Alameda Praça Rodovia Street Avenue Road Lane")
STATUSES = _split("pending paid paid paid shipped shipped delivered delivered delivered cancelled refunded")
CURRENCIES = _split("BRL BRL BRL USD EUR")
EVENT_KINDS = _split(
    "page_view page_view page_view page_view search add_to_cart remove_from_cart checkout_started "
    "payment_authorized login logout signup password_reset review_posted"
)
PATHS = _split("/ /produtos /produtos/busca /carrinho /checkout /conta /conta/pedidos /ajuda /blog /ofertas")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 "
    "Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "okhttp/4.12.0",
    "curl/8.5.0",
)


def vocabulary(size: int = 6000, seed: int = 2024) -> list[str]:
    """Pronounceable pseudo-words (2-4 syllables), distinct, in a fixed order (rank 1 is the commonest)."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "br", "tr", "pl", "ch", "qu"]
    vowels = ["a", "e", "i", "o", "u", "ão", "ei", "ou", "ia"]
    codas = ["", "", "", "s", "r", "n", "l", "m"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 4)))
        if len(word) >= 2 and word not in seen:
            seen.add(word)
            words.append(word)
    # short words first, so the Zipf head is made of short words, as in real prose
    words.sort(key=lambda w: (len(w) + rng.random() * 6))
    return words


def _array(items: Sequence[str]) -> str:
    """A text[] literal; the items are ours (no quotes or backslashes), so plain quoting is enough."""
    body = ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "'{" + body.replace("'", "''") + "}'::text[]"


#: The word lists live in IMMUTABLE functions of a scratch schema: the planner folds each call into a
#: constant, so the INSERT statements stay short. The schema is dropped after the load.
LISTS = {
    "first_names": FIRST_NAMES, "last_names": LAST_NAMES, "cities": CITIES, "countries": COUNTRIES,
    "streets": STREETS, "statuses": STATUSES, "currencies": CURRENCIES, "event_kinds": EVENT_KINDS,
    "paths": PATHS, "user_agents": USER_AGENTS,
    "domains": ("gmail.com", "hotmail.com", "yahoo.com.br", "outlook.com", "uol.com.br"),
}


def lists_sql(vocab: Sequence[str]) -> str:
    # The vocabulary is a name[]: fixed-width elements make a subscript O(1), where text[] walks the array.
    functions = {name: f"{_array(items)}" for name, items in LISTS.items()}
    functions["vocab"] = _array(vocab).replace("::text[]", "::name[]")
    return "CREATE SCHEMA benchgen;\n" + "".join(
        f"CREATE FUNCTION benchgen.{name}() RETURNS {literal.rsplit('::', 1)[1]} IMMUTABLE PARALLEL SAFE "
        f"LANGUAGE sql AS $$ SELECT {literal} $$;\n"
        for name, literal in functions.items()
    )


def _pick(name: str) -> str:
    """A uniformly random element of list ``name``."""
    return f"(benchgen.{name}())[1 + floor(random() * {len(LISTS[name])})::int]"


#: One vocabulary word, Zipf-distributed: P(rank k) ~ 1/k, as word frequencies in prose.
def _word(n_vocab: int) -> str:
    return f"(benchgen.vocab())[floor(exp(random() * ln({n_vocab} + 0.999)))::int]::text"


def _words(n_vocab: int, low: int, high: int) -> str:
    """A sentence of ``low..high`` words; referencing ``i`` makes it a new sentence for each row."""
    return (
        f"(SELECT string_agg({_word(n_vocab)}, ' ') "
        f"FROM generate_series(1, {low} + floor(random() * {high - low + 1})::int + 0 * i))"
    )


def schema_sql() -> str:
    return """
CREATE TABLE customers (
    id bigint NOT NULL, uuid uuid NOT NULL, first_name text NOT NULL, last_name text NOT NULL,
    email text NOT NULL, phone text, city text, country char(2), created_at timestamptz NOT NULL,
    birth_date date, credit_limit numeric(12,2), password_hash text, tags text[], notes text
);
CREATE TABLE orders (
    id bigint NOT NULL, customer_id bigint NOT NULL, placed_at timestamptz NOT NULL, status text NOT NULL,
    currency char(3) NOT NULL, subtotal numeric(12,2), shipping numeric(8,2), total numeric(12,2),
    payment_ref text, shipping_address text, items jsonb, comment text
);
CREATE TABLE events (
    id bigint NOT NULL, occurred_at timestamptz NOT NULL, customer_id bigint, session_id uuid,
    kind text NOT NULL, path text, ip inet, user_agent text, duration_ms integer, payload jsonb
);
"""


def constraints_sql() -> str:
    return """
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
ALTER TABLE events ADD PRIMARY KEY (id);
"""


def insert_sql(table: str, first: int, last: int, n_customers: int, n_vocab: int) -> str:
    """One ``INSERT ... SELECT`` of rows ``first..last`` of ``table``."""
    word = _word(n_vocab)
    words = lambda low, high: _words(n_vocab, low, high)  # noqa: E731
    per_row = "left(i::text, 0)"  # an outer reference, so LATERAL picks are drawn again for each row
    series = f"generate_series({first}, {last}) AS i"
    if table == "customers":
        return f"""
INSERT INTO customers
SELECT i, gen_random_uuid(), f, l,
       lower(translate(f || '.' || l, 'ãáâçéêíóôõúüÁÉÍÓÚÇ', 'aaaceeiooouuAEIOUC')) || (i % 997) || '@'
           || {_pick("domains")},
       '+55 ' || (11 + floor(random() * 89))::int || ' 9' || lpad(floor(random() * 1e8)::bigint::text, 8, '0'),
       {_pick("cities")}, {_pick("countries")},
       timestamptz '2015-01-01' + random() * interval '3400 days',
       date '1950-01-01' + floor(random() * 20000)::int,
       round((random() * 50000)::numeric, 2),
       '$2b$12$' || left(encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64'), 43),
       ARRAY[{word}, {word}],
       CASE WHEN random() < 0.6 THEN {words(4, 40)} END
FROM {series}, LATERAL (SELECT {_pick("first_names")} || {per_row}, {_pick("last_names")} || {per_row}) n(f, l);
"""
    if table == "orders":
        return f"""
INSERT INTO orders
SELECT i, 1 + floor(random() * {n_customers})::bigint,
       timestamptz '2019-01-01' + random() * interval '2000 days',
       {_pick("statuses")}, {_pick("currencies")},
       sub, ship, sub + ship, 'pi_' || md5(random()::text),
       {_pick("streets")} || ' ' || initcap({word}) || ' ' || initcap({word}) || ', '
           || (1 + floor(random() * 3000))::int || ' - ' || {_pick("cities")} || ' '
           || lpad(floor(random() * 100000)::int::text, 5, '0') || '-'
           || lpad(floor(random() * 1000)::int::text, 3, '0'),
       items,
       CASE WHEN random() < 0.5 THEN {words(3, 30)} END
FROM {series},
     LATERAL (SELECT jsonb_agg(jsonb_build_object(
                  'sku', upper(substr(md5(random()::text), 1, 8)),
                  'name', initcap({word} || ' ' || {word}),
                  'qty', 1 + floor(random() * 4)::int,
                  'unit_price', round((1 + random() * 400)::numeric, 2)))
              FROM generate_series(1, 1 + floor(random() * 4)::int + 0 * i)) it(items),
     LATERAL (SELECT round((10 + random() * 1500)::numeric, 2) + 0 * i,
                     round((random() * 60)::numeric, 2)) money(sub, ship);
"""
    if table == "events":
        return f"""
INSERT INTO events
SELECT i, timestamptz '2024-01-01' + random() * interval '365 days',
       CASE WHEN random() < 0.7 THEN 1 + floor(random() * {n_customers})::bigint END,
       gen_random_uuid(), kind,
       {_pick("paths")} || CASE WHEN random() < 0.5 THEN '/' || {word} ELSE '' END,
       ('10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.'
           || floor(random() * 256)::int)::inet,
       {_pick("user_agents")},
       floor(random() * random() * 5000)::int,
       jsonb_build_object('ref', {word}, 'page', 1 + floor(random() * 20)::int,
                          'ab', CASE WHEN random() < 0.5 THEN 'A' ELSE 'B' END,
                          'query', CASE WHEN kind = 'search' OR random() < 0.3 THEN {words(1, 6)} END,
                          'amount', CASE WHEN random() < 0.2 THEN round((random() * 900)::numeric, 2) END)
FROM {series}, LATERAL (SELECT {_pick("event_kinds")} || {per_row}) k(kind);
"""
    raise ValueError(f"unknown table {table!r}")


def plan_rows(dump_mb: float) -> dict[str, int]:
    """Rows per table for a dump of about ``dump_mb`` MB (10^6 bytes)."""
    return {t: max(1000, int(dump_mb * 1e6 * SHARE[t] / ROW_BYTES[t])) for t in SHARE}


def build(
    run_sql: Callable[[str, str], object],
    database: str,
    dump_mb: float,
    *,
    sessions: int = 2,
    log: Callable[[str], None] = print,
    rows: dict[str, int] | None = None,
) -> dict[str, int]:
    """Load the tables into an existing, empty ``database``; ``run_sql(sql, database)`` runs one script.

    The INSERTs are cut into chunks and run on ``sessions`` connections at once (one per core), then
    the primary keys are added and the tables vacuumed (so the dumps that follow set no hint bits).
    ``rows`` overrides the row counts planned from ``dump_mb`` (tiny databases: plan_rows's floor is ~1 MB).
    Returns the row counts.
    """
    rows = rows or plan_rows(dump_mb)
    vocab = vocabulary()
    started = time.monotonic()
    run_sql(lists_sql(vocab) + schema_sql(), database)
    tasks = []
    for table, count in rows.items():
        for first in range(1, count + 1, CHUNK_ROWS):
            last = min(count, first + CHUNK_ROWS - 1)
            tasks.append(insert_sql(table, first, last, rows["customers"], len(vocab)))
    with ThreadPoolExecutor(sessions) as pool:
        for future in [pool.submit(run_sql, sql, database) for sql in tasks]:
            future.result()
    loaded = time.monotonic() - started
    run_sql("DROP SCHEMA benchgen CASCADE", database)
    with ThreadPoolExecutor(sessions) as pool:
        statements = [s for s in constraints_sql().split(";") if s.strip()]
        for future in [pool.submit(run_sql, sql, database) for sql in statements]:
            future.result()
        for future in [pool.submit(run_sql, f"VACUUM (FREEZE, ANALYZE) {t}", database) for t in rows]:
            future.result()
    log(f"  {database}: {sum(rows.values()):,} rows loaded in {loaded:.0f}s, keys and vacuum "
        f"{time.monotonic() - started - loaded:.0f}s")
    return rows


def psql_runner(bindir: str, env: dict[str, str]) -> Callable[[str, str], str]:
    """``run_sql(sql, database)`` through psql, the script on stdin (the vocabulary is too long for argv)."""

    def run_sql(sql: str, database: str) -> str:
        out = subprocess.run(
            [f"{bindir}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, "-f", "-"],
            input=sql, capture_output=True, text=True, env=env, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql on {database!r} failed: {out.stderr.strip()[-2000:]}")
        return out.stdout.strip()

    return run_sql
