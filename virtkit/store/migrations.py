"""Schema migrations for the SQL store: an ordered list, applied once each, recorded in schema_version."""

from __future__ import annotations

from sqlalchemy import Connection, text

# Each entry upgrades the schema from version i to i+1. Never edit a released entry; append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            image TEXT NOT NULL,
            spec TEXT NOT NULL,
            pid INTEGER,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            exit_code INTEGER,
            exit_reason TEXT
        )""",
    ],
    [
        """CREATE TABLE volumes (
            name TEXT PRIMARY KEY,
            driver TEXT NOT NULL,
            size INTEGER,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE snapshots (
            instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (instance_id, name)
        )""",
    ],
    [
        """CREATE TABLE networks (
            name TEXT PRIMARY KEY,
            "index" INTEGER NOT NULL UNIQUE,
            subnet TEXT NOT NULL UNIQUE,
            gateway TEXT NOT NULL,
            nat INTEGER NOT NULL,
            isolated INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE leases (
            network TEXT NOT NULL REFERENCES networks(name),
            address TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            mac TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (network, address)
        )""",
        "CREATE INDEX leases_instance ON leases (instance_id)",
    ],
    [   # IPv6, opt-in per network: its subnet and gateway; each lease on it one more address (NULLs never clash)
        "ALTER TABLE networks ADD COLUMN subnet6 TEXT",
        "ALTER TABLE networks ADD COLUMN gateway6 TEXT",
        "CREATE UNIQUE INDEX networks_subnet6 ON networks (subnet6)",
        "ALTER TABLE leases ADD COLUMN address6 TEXT",
        "CREATE UNIQUE INDEX leases_address6 ON leases (network, address6)",
    ],
]

LATEST = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    row = conn.execute(text("SELECT version FROM schema_version")).first()
    if row is None:
        conn.execute(text("INSERT INTO schema_version (version) VALUES (0)"))
        return 0
    return int(row[0])


def migrate(conn: Connection) -> int:
    """Bring the schema to LATEST inside the caller's transaction; returns the version reached."""
    version = current_version(conn)
    if version > LATEST:
        from virtkit.core.errors import Unsupported

        raise Unsupported(f"store schema version {version} is newer than this virtkit ({LATEST}); upgrade virtkit")
    for target in range(version, LATEST):
        for statement in MIGRATIONS[target]:
            conn.execute(text(statement))
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": target + 1})
    return LATEST
