"""The operations console: web pages at ``/console`` and the JSON admin API at
``/admin/api/…``, served by the edge (``console.app.build``). See docs/console.md."""
