-- An application log kept in the database, written by the order workflow.
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error')),
    message TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX logs_level ON logs (level);
