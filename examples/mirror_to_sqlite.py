#!/usr/bin/env python3
"""Mirror a fieldsync agent's records into SQLite by following its changes feed.

Standard library only. Keeps one SQLite table per fieldsync table, with the columns
`uuid` (primary key), `modified_on` (time of the record's latest revision, UTC ISO 8601),
`deleted` (0/1) and one column per field (added as fields appear; objects and arrays are
stored as JSON text; a field named uuid/modified_on/deleted gets a trailing underscore).

The position in the feed (`last_seq`) is stored in the same SQLite transaction as the rows it
covers, so after a crash or restart of either side the mirror resumes exactly where it stopped:
nothing is missed and nothing is applied twice past the stored position.

Usage:
    python3 examples/mirror_to_sqlite.py --data-dir ~/.local/share/fieldsync --db mirror.sqlite
    python3 examples/mirror_to_sqlite.py --data-dir DIR --db mirror.sqlite --once

The URL and bearer token are read from api.json in the agent's data directory (re-read when
the agent restarts), or given with --url and --token.
"""

import argparse
import json
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

RESERVED = {"uuid", "modified_on", "deleted"}


class Api:
    def __init__(self, args):
        self.args = args
        self.url = args.url
        self.token = args.token
        if not (self.url and self.token):
            self.reload()

    def reload(self):
        if self.args.url and self.args.token:
            return
        path = os.path.join(self.args.data_dir, "api.json")
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        self.url, self.token = info["url"], info["token"]

    def get(self, path, timeout):
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": "Bearer " + self.token}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)


def quote(name):
    return '"' + name.replace('"', '""') + '"'


def column(field):
    return field + "_" if field in RESERVED else field


def sql_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


class Mirror:
    def __init__(self, path):
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS _fieldsync_state (key TEXT PRIMARY KEY, value)"
        )
        self.db.commit()
        self.columns = {}

    def last_seq(self):
        row = self.db.execute(
            "SELECT value FROM _fieldsync_state WHERE key = 'last_seq'"
        ).fetchone()
        return int(row[0]) if row else 0

    def table_columns(self, table):
        if table not in self.columns:
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {quote(table)} (uuid TEXT PRIMARY KEY, "
                "modified_on TEXT, deleted INTEGER NOT NULL DEFAULT 0)"
            )
            cols = [r[1] for r in self.db.execute(f"PRAGMA table_info({quote(table)})")]
            self.columns[table] = set(cols)
        return self.columns[table]

    def apply(self, record, modified_on):
        table = record["table"]
        cols = self.table_columns(table)
        fields = {column(k): sql_value(v) for k, v in record["fields"].items()}
        for c in fields:
            if c not in cols:
                self.db.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(c)}")
                cols.add(c)
        # Fields the record no longer has are NULL: the row is the record as it is now.
        row = {c: None for c in cols if c not in RESERVED}
        row.update(fields)
        row.update(
            uuid=record["id"],
            modified_on=modified_on,
            deleted=1 if record.get("deleted") else 0,
        )
        names = list(row)
        self.db.execute(
            f"INSERT OR REPLACE INTO {quote(table)} ({', '.join(map(quote, names))}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )

    def save(self, seq):
        self.db.execute(
            "INSERT OR REPLACE INTO _fieldsync_state (key, value) VALUES ('last_seq', ?)",
            (seq,),
        )
        self.db.commit()


def modified_on(rev):
    # A revision stamp is `2026-11-24T14:00:00.123Z#0003@<instance>`.
    return rev.split("#", 1)[0] if rev else None


def fetch_record(api, change, timeout):
    path = "/v1/tables/{}/records/{}?include_deleted=true".format(
        urllib.parse.quote(change["table"]), change["id"]
    )
    try:
        return api.get(path, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def run(args):
    api = Api(args)
    mirror = Mirror(args.db)
    since = mirror.last_seq()
    failures = 0
    while True:
        feed = "normal" if args.once else "longpoll"
        path = f"/v1/changes?since={since}&limit={args.batch}&feed={feed}&timeout_ms={args.timeout_ms}"
        try:
            page = api.get(path, args.timeout_ms / 1000 + 30)
            for change in page["changes"]:
                record = fetch_record(api, change, 30)
                if record is not None:
                    mirror.apply(record, modified_on(record.get("rev")))
            if page["changes"]:
                since = page["last_seq"]
                mirror.save(since)
                print(f"mirrored {len(page['changes'])} changes up to {since}", flush=True)
            elif args.once:
                return 0
            failures = 0
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            # The agent restarted (new port, same token file) or is down: re-read api.json.
            mirror.db.rollback()
            failures += 1
            if args.once and failures > args.retries:
                print(f"mirror_to_sqlite: cannot read the feed: {e}", file=sys.stderr)
                return 1
            time.sleep(min(5.0, 0.2 * failures))
            try:
                api.reload()
            except (OSError, ValueError, KeyError):
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="the agent's data directory (for api.json)")
    p.add_argument("--url", help="base URL of the API, e.g. http://127.0.0.1:7438")
    p.add_argument("--token", help="bearer token (default: from api.json)")
    p.add_argument("--db", required=True, help="the SQLite file to keep up to date")
    p.add_argument("--once", action="store_true", help="exit when caught up")
    p.add_argument("--batch", type=int, default=500, help="changes per request")
    p.add_argument("--timeout-ms", type=int, default=30000, help="long-poll wait")
    p.add_argument("--retries", type=int, default=20, help="--once: failed requests to tolerate")
    args = p.parse_args()
    if not (args.data_dir or (args.url and args.token)):
        p.error("give --data-dir, or --url and --token")
    try:
        return run(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
