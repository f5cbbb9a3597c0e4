"""The README's walkthrough is what tools/walkthrough.py prints today (rerun it and paste its output when the
model's steps change). The script itself asserts that its steps add up to AltCLIPModel's logits."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from walkthrough import BEGIN, END  # noqa: E402


def test_the_readme_carries_what_the_walkthrough_prints():
    printed = subprocess.run([sys.executable, str(ROOT / "tools" / "walkthrough.py")], capture_output=True,
                             text=True, timeout=300, check=True).stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    section = readme[readme.index(BEGIN):readme.index(END) + len(END)]
    assert printed.strip() == section, "README.md's walkthrough is outdated: paste tools/walkthrough.py's output"
    assert printed.count("| step | computed by | shape |") == 3 and "```mermaid" in printed  # 3 tables, 1 diagram
