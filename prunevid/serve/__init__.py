"""``prunevid serve``: an OpenAI-compatible video question-answering server over the torch-free runtime.

    request --admission (queue ticket, 429 when full)--> body read under a byte cap
      --media (data: / file:// under --media-dir / http(s) with --allow-remote-media; SSRF guard)-->
      temp file --decode worker (a killable subprocess with size, duration and time caps)--> pixels
      --generation slot (one, bounded wait)--> RuntimePipeline.generate in one worker thread --> tokens

Modules: :mod:`settings` (limits, profiles), :mod:`protocol` (request parsing, response and error
bodies), :mod:`admission` (tickets and the slot), :mod:`media` (sources, URL policy, fetcher, decode
worker), :mod:`engine` (the loaded export and the generation thread), :mod:`metrics` (Prometheus),
:mod:`app` (HTTP routes), :mod:`server` (uvicorn with a SIGTERM drain), :mod:`ray_app` (Ray Serve
scale-out), :mod:`client` (``prunevid ask``). Nothing here imports torch.
"""
