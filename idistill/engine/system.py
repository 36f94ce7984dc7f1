"""The machine's load beside the training curves: system/* metrics under the names MLflow's own
system metrics use, so that a run's "System metrics" tab in the MLflow UI plots them. They go
through the run's journal with the train/* metrics (an outage loses none of them)."""

from __future__ import annotations

import torch

try:
    import psutil
except ImportError:  # an install without it logs only the GPU's memory
    psutil = None

MB = 1e6  # MLflow's megabytes


class SystemMetrics:
    """One sample per train/* log. The CPU's utilization is its mean since the previous sample
    (psutil measures between calls), of all cores (100 = every core busy)."""

    def __init__(self, device: torch.device):
        self.device = device
        if psutil is not None:
            psutil.cpu_percent()  # starts the first interval

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if psutil is not None:
            memory = psutil.virtual_memory()
            out["system/cpu_utilization_percentage"] = psutil.cpu_percent()
            out["system/system_memory_usage_megabytes"] = memory.used / MB
            out["system/system_memory_usage_percentage"] = memory.percent
            out["system/process_memory_rss_megabytes"] = psutil.Process().memory_info().rss / MB
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            i = self.device.index or 0
            out[f"system/gpu_{i}_memory_usage_megabytes"] = (total - free) / MB
            out[f"system/gpu_{i}_memory_usage_percentage"] = 100 * (total - free) / total
        return out
