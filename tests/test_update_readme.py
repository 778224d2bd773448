"""experiments.update_readme: the results blocks of README.md and docs/ are the records."""

from experiments import update_readme

# Every committed record shown somewhere: README.md or a page under docs/.
SHOWN = {
    "quickstart": "README.md",
    "fig1_diffusion": "README.md",
    "fig1_l2": "README.md",
    "schemes_round_trips": "docs/guides/ladder-and-c.md",
    "compare_mnist1d": "docs/guides/comparison.md",
    "compare_fashion_mnist": "docs/guides/comparison.md",
    "compare_cifar10": "docs/guides/comparison.md",
    "ensemble_mnist1d": "docs/guides/comparison.md",
    "ensemble_fashion_mnist": "docs/guides/comparison.md",
    "ensemble_cifar10": "docs/guides/comparison.md",
    "bench_raytune": "docs/guides/comparison.md",
    "reliability": "docs/guides/reliability.md",
    "fig2_table": "docs/guides/paper.md",
    "fig2_summary": "README.md",
    "claims": "README.md",
    "rounds_memory": "docs/guides/performance.md",
    "round_cost": "docs/guides/performance.md",
    "first_step": "docs/guides/performance.md",
    "round_cost_replicas": "docs/guides/performance.md",
    "bench_zoo": "docs/guides/performance.md",
    "zoo_summary": "README.md",
    "bench_zoo_avx2": "docs/guides/performance.md",
    "bench_zoo_zen3": "docs/guides/performance.md",
    "bench_zoo_many": "docs/guides/performance.md",
    "bench_zoo_many_tuned": "docs/guides/performance.md",
    "bench_zoo_tuned": "docs/guides/performance.md",
    "bench_zoo_h100": "docs/guides/performance.md",
    "bench_zoo_h100_short": "README.md",
    "profile_dense_cpu": "docs/guides/performance.md",
}


def test_update_fills_blocks_reports_missing_and_is_idempotent(tmp_path):
    (tmp_path / "table.md").write_text("| a |\n|---|\n| 1 |\n\n")
    text = (
        "intro\n<!-- results:table -->\nstale\n<!-- /results:table -->\nmiddle\n"
        "<!-- results:gone -->\nkept\n<!-- /results:gone -->\n"
    )
    new, missing = update_readme.update(text, tmp_path)
    assert new == (
        "intro\n<!-- results:table -->\n| a |\n|---|\n| 1 |\n<!-- /results:table -->\n"
        "middle\n<!-- results:gone -->\nkept\n<!-- /results:gone -->\n"
    )
    assert missing == ["gone"]
    assert update_readme.update(new, tmp_path) == (new, ["gone"])


def test_reads_the_committed_records():
    from experiments import common

    assert update_readme.RECORDS_DIR == common.RECORDS_DIR
    assert update_readme.REPO_ROOT == common.REPO_ROOT


def test_readme_and_docs_are_up_to_date_with_the_records():
    pages = update_readme.pages()
    root = update_readme.REPO_ROOT
    assert root / "README.md" in pages
    assert root / "docs" / "guides" / "performance.md" in pages
    for page in pages:
        text = page.read_text()
        new, missing = update_readme.update(text)
        assert not missing, f"{page}: no experiments/results/<name>.md for {missing}"
        assert new == text, f"{page} is stale: run python -m experiments.update_readme"
    assert update_readme.main(["--check"]) == 0


def test_every_record_keeps_its_block():
    for name, page in SHOWN.items():
        text = (update_readme.REPO_ROOT / page).read_text()
        assert f"<!-- results:{name} -->\n" in text, (name, page)
        assert f"<!-- /results:{name} -->" in text, (name, page)
        assert (update_readme.RECORDS_DIR / f"{name}.md").exists(), name
