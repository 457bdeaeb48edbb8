"""``junit.xml``: one test case per model, sample and level, failed when that sample flipped at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from audit.io import atomic_path


def write_junit(path: Path, report: dict[str, Any], ids: list[str]) -> None:
    unit = report["noise"]["level_unit"]
    root = ET.Element("testsuites", name="robustness-audit")
    for model in report["models"]:
        cases = failures = 0
        suite = ET.SubElement(root, "testsuite", name=f"robustness.{model['name']}")
        for block in model["levels"]:
            sar = block["per_sample"]["SAR"]
            flips = block["per_sample"]["n_flips"]
            for i, (s, n_i) in enumerate(zip(sar, flips)):
                case = ET.SubElement(suite, "testcase", classname=f"{model['name']}.level_{block['level']:g}",
                                     name=f"{ids[i]} @ {block['level']:g} {unit}")
                cases += 1
                if n_i:
                    failures += 1
                    f = ET.SubElement(case, "failure", message=f"flipped in {n_i} of {block['K']} draws (SAR {s:.3f})")
                    f.text = f"sample {ids[i]}, level {block['level']:g} {unit}: SAR_i = {s:.4f}"
        suite.set("tests", str(cases))
        suite.set("failures", str(failures))
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
