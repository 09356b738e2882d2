"""web: the node's HTTP side on Starlette + uvicorn: the reading worklist page and its JSON API (read-only),
and, with stow_receive, the DICOMweb STOW-RS endpoint."""
