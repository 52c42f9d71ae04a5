"""swift_plugins.dev.equivalence_docs: the generated sections of the equivalence analysis are current."""
from swift_plugins.dev.equivalence_docs import GENERATED_BEGIN, generated_sections, update_generated_docs


def test_equivalence_doc_generated_sections_are_current(repo_root):
    path = repo_root / "docs/temp_packed_dataset/equivalence-analysis.md"
    text = path.read_text()
    sections = generated_sections()
    for name in sections:
        assert GENERATED_BEGIN.format(name=name) in text, name
    assert update_generated_docs(text, sections) == text, (
        "stale generated sections: python -m swift_plugins.dev.update_docs " + str(path))


def test_equivalence_doc_prose_states_the_mechanism_and_quotes_no_numbers(repo_root):
    import re

    text = (repo_root / "docs/temp_packed_dataset/equivalence-analysis.md").read_text()
    prose = re.sub(r"<!-- generated:(\S+) begin.*?<!-- generated:\1 end -->", "", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    for term in ("num_items_in_batch", "-100", "cu_seqlens", "block-diagonal", "get_rope_index", "mrope",
                 "token mean", "warmup_ratio", "eval_steps", "save_steps", "save_delay_steps", "logging_steps",
                 "learning-rate schedule", "samples per step", "optimizer steps per epoch",
                 "ceil(packs / effective_batch_size)", "average_tokens_across_devices"):
        assert term in prose, term
    prose = re.sub(r"(?m)^(#+ )?\d+\. ", "", prose)  # section and list numbering
    prose = prose.replace("ms-swift 4.6", "").replace("transformers 5.x", "").replace("arXiv 2410.08081", "")
    numbers = {m.rstrip(".,") for m in re.findall(r"(?<![\w.-])\d[\d,.]*(?![\w])", prose)}
    assert numbers <= {"0", "1", "2"}, numbers  # formulas only (x + 1, 1/2); results live in generated files
