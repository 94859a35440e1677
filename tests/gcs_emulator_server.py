"""gcp-storage-emulator with one gap of its media downloads filled: real GCS sends each object's
generation (x-goog-generation) with its bytes, and TensorStore (orbax's arrays) reads it; without
it a checkpoint read fails now and then with "Malformed StorageGeneration". Run as a script with
the emulator's own arguments."""

import runpy

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # not found: the original handler has answered already
        return
    response["x-goog-generation"] = str(obj.get("generation", 1))
    response["x-goog-metageneration"] = str(obj.get("metageneration", 1))


objects.download = download_with_generation
for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
        if handler is _download:
            handlers[method] = download_with_generation

if __name__ == "__main__":
    runpy.run_module("gcp_storage_emulator", run_name="__main__")
