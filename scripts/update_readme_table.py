"""Rewrite the optimizer table in README.md from the registry (``rvc-optim list --markdown``).

tests/test_readme.py checks that the README holds exactly this table; run this after changing a record.
"""

from pathlib import Path

from rvc_optim.cli import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    lines = README.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| Guide's rating | Optimizer |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    lines[start:end] = markdown_table().split("\n")
    README.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
