"""The database: connections, the embedded server, migrations, the schema check, pools, replicas,
and the keyword index's upkeep."""
