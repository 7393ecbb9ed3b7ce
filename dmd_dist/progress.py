"""The progress bar every long-running command shows on stderr (tqdm), off with `output.progress = false`."""


def progress_bar(total, desc, unit, enabled=True, initial=0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
