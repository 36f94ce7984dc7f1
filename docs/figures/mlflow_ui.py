"""The README's MLflow screenshots, taken by a real browser from a running `make ui`.

Needs Chromium and its driver (Debian: `apt install chromium chromium-driver`) and selenium
(`pip install selenium`, not an idistill dependency):

    make ui &                                   # or: mlflow ui --backend-store-uri sqlite:///...
    python docs/figures/mlflow_ui.py --experiment 1 --url http://127.0.0.1:5000

It opens the experiment in the UI's "Model training" view, shows the metric and param columns a
reader of idistill's runs wants (test BLEU and chrF, best validation loss, K, alpha, precision)
and writes `mlflow_runs.png`, then the chart view of the validation curves, `mlflow_charts.png`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

HIDE = ("Dataset", "Source", "Models")  # default columns that say nothing about these runs
SHOW = ("test/bleu", "test/chrf", "best/valid/loss", "method.k", "method.alpha",
        "trainer.precision")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:5000")
    p.add_argument("--experiment", default="1", help="the experiment id")
    p.add_argument("--charts", default="valid/", help="what the chart view's search shows")
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.set_window_size(1500, 800)
        d.get(f"{args.url}/#/experiments/{args.experiment}/runs?workflowType=machine_learning")
        time.sleep(8)
        for close in d.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
            if close.is_displayed():
                close.click()  # the assistant's panel
        _button(d, "Columns").click()
        time.sleep(2)
        for name in HIDE:
            _toggle(d, name)
        for name in SHOW:
            _toggle(d, name, search=True)
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        d.set_window_size(1500, 560)  # the table's few rows, not the empty page below
        time.sleep(2)
        d.save_screenshot(str(args.out / "mlflow_runs.png"))
        d.set_window_size(1500, 800)

        chart = d.find_elements(By.CSS_SELECTOR, "input[type=radio][value=CHART]")[0]
        d.execute_script("arguments[0].click()", chart)  # the radio itself is hidden
        time.sleep(4)
        d.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']").send_keys(
            args.charts
        )
        d.set_window_size(1500, 1350)
        time.sleep(4)
        d.save_screenshot(str(args.out / "mlflow_charts.png"))
    finally:
        d.quit()


def _button(d, text: str):
    return next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == text)


def _toggle(d, name: str, search: bool = False) -> None:
    """Ticks or unticks one column in the open Columns menu (searched for, when it is a metric
    or param, since the menu lists only the first of them)."""
    box = d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)  # the field is React's: clear() does not empty it
    if search:
        box.send_keys(name)
    time.sleep(1)
    xpath = f"//*[normalize-space(.)='{name}' and not(*[normalize-space(.)='{name}'])]"
    found = d.find_elements(By.XPATH, xpath)
    if not found:
        raise SystemExit(f"no column {name!r} in the Columns menu: has any run logged it?")
    found[-1].click()
    time.sleep(0.7)


if __name__ == "__main__":
    main()
