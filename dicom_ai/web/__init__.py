"""web: the node's HTTP side on Starlette + uvicorn: the signed-in console (pages, JSON API, /metrics) and,
with stow_receive, the DICOMweb STOW-RS endpoint."""
