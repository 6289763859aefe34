"""Child processes of the schema, tenant and database-identity tests
(tests/orm/test_postgresql_only.py): another deployment's process on its own database,
and a django-tenants project, whose database engine and router the main test settings
cannot have. Nothing here is collected by pytest."""
