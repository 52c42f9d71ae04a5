"""swift_plugins.config.docs: docs/configuration.md holds the current schema table."""
from swift_plugins.config.docs import update_docs


def test_docs_schema_table_is_up_to_date(repo_root):
    text = (repo_root / "docs" / "configuration.md").read_text()
    assert update_docs(text) == text, "run: python -m swift_plugins.dev.update_docs"
