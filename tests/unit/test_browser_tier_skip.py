"""The browser tier says why it skips: no Chromium (never a downloaded browser) or no Playwright."""

import pytest

import ve_testkit.browser as browser


def test_no_chromium_gives_a_reason_naming_the_fix(monkeypatch, tmp_path):
    pytest.importorskip("playwright")  # without it the reason names Playwright first
    monkeypatch.delenv("VE_CHROMIUM", raising=False)
    monkeypatch.setattr(browser, "DEBIAN_CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    assert browser.chromium_path() is None
    reason = browser.skip_reason()
    assert reason and "apt-get install chromium" in reason


def test_ve_chromium_points_at_another_executable(monkeypatch, tmp_path):
    exe = tmp_path / "chromium"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("VE_CHROMIUM", str(exe))
    assert browser.chromium_path() == str(exe)
