"""Device selection from gpu_id."""
import torch


def apply_limits(device: torch.device, cpu_threads: int | None, gpu_memory_fraction: float | None) -> list[str]:
    """Cap CPU threads and the GPU memory share; returns what was applied, for the log."""
    applied = []
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
        applied.append(f"{cpu_threads} CPU thread(s)")
    if gpu_memory_fraction and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, device)
        applied.append(f"{gpu_memory_fraction:.0%} of {device}'s memory")
    return applied


def select_device(gpu_id: int) -> tuple[torch.device, str | None]:
    """The device to train on, and a warning when the requested GPU is not available."""
    if gpu_id < 0:
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        return torch.device("cpu"), f"gpu_id {gpu_id} was requested but CUDA is not available; training on the CPU"
    count = torch.cuda.device_count()
    if gpu_id >= count:
        return torch.device("cpu"), (f"gpu_id {gpu_id} was requested but only {count} CUDA device(s) exist "
                                     "(cuda:0..); training on the CPU")
    return torch.device(f"cuda:{gpu_id}"), None
