"""Reads a chdb warehouse folder in a process of its own and prints the rows as JSON.

chdb runs one engine per process on one folder, and the test process has its own: a
service's warehouse is read after the service stopped, with
``python -m tests.support.chdb_probe FOLDER SQL``.
"""

from __future__ import annotations

import json
import sys

import clickhouse_connect


def main(folder: str, sql: str) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{folder}")
    rows = client.query(sql).result_rows
    json.dump([list(r) for r in rows], sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
