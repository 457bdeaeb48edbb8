"""The pytest plugin, used the way a team would: a test file in its own project, run by pytest."""

from __future__ import annotations


from tests.audit.conftest import REGION, planted_images, write_manifest
from tests.audit.planted import region_means



def test_robustness_checks_as_ordinary_tests(pytester, planted):
    images = planted_images(12, spread_hu=5.0)
    manifest = write_manifest(pytester.path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    pytester.makefile(".toml", audit=f'[model]\npath = "{planted}"\nname = "planted"\n[data]\nmanifest = "{manifest}"\n'
                                      '[noise]\nlevels = [50, 200]\ndraws = 8\nsigma_ref = 40.0\n')
    pytester.makepyfile(test_model="""
        def test_clean(robustness_audit):
            robustness_audit("audit.toml").assert_clean_at_least("accuracy", 0.99)

        def test_lenient(robustness_audit):
            report = robustness_audit("audit.toml")
            report.assert_sar_below(200, 1.0, cls="above")
            assert 0 <= report.sar(50) <= 1

        def test_strict(robustness_audit):
            robustness_audit("audit.toml").assert_sar_below(50, 0.0)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*robustness check failed*", "*sar*planted*FAIL*"])
