"""The README's promises: its table is the registry's, its test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from rvc_optim.benchmark import fastest_published, latest_default_rows, readme_table, summary_table
from rvc_optim.cli import main, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _first_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_table_is_generated_from_the_records():
    assert markdown_table() in _readme()


def test_readme_benchmark_tables_are_generated_from_the_committed_result_files():
    section = _readme().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"Generated from `(benchmarks/results/[^`]+\.json)`", section)
    assert names, "the Benchmarks section must name the result file each table is generated from"
    for name in names:
        result_file = ROOT / name
        assert result_file.is_file() and result_file.with_suffix(".md").is_file()
        assert readme_table(result_file) in section, f"the table generated from {name} is not in the README"


def _summary_files(section: str) -> list[Path]:
    line = next(line for line in section.splitlines() if "Summarised from" in line)
    return [ROOT / name for name in re.findall(r"`(benchmarks/results/[^`]+\.json)`", line)]


def test_readme_summary_is_generated_from_the_committed_result_files():
    section = _readme().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    files = _summary_files(section)
    assert len(files) > 1 and all(f.is_file() for f in files)
    assert summary_table(files) in section


def test_readme_claim_default_path_at_least_as_fast_as_every_published_one():
    """The README's count of comparisons the default path wins, checked against the summarised rows."""
    section = _readme().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    latest = latest_default_rows(_summary_files(section))
    compared = {key: (next(r for r in rows if r.kind == "default"), fastest_published(rows))
                for key, (_, rows) in latest.items()}
    compared = {key: pair for key, pair in compared.items() if pair[1] is not None}
    slower = [key for key, (ours, best) in compared.items() if not ours.ratio <= best.ratio]
    claim = re.search(r"default path is faster or equal in all (\d+) comparisons", section)
    assert claim and int(claim.group(1)) == len(compared)
    assert not slower, f"the default path is slower than a published implementation for {slower}"


def test_the_two_first_commands():
    install_and_train, install_and_test = _first_commands()[:2]
    assert "pip install" in install_and_train and "-c constraints.txt" in install_and_train
    assert "rvc-optim train --demo" in install_and_train
    assert install_and_test == "bash scripts/test.sh"
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_list_markdown_prints_the_table(capsys):
    assert main(["list", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == markdown_table()
