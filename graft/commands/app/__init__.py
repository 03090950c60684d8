"""``graft app``: a local web app to label images, check the labels, train, try and export a model.

    graft app my-project --data photos/ --pool unlabelled/      # http://127.0.0.1:8765/

The project folder holds the app's state (:mod:`graft.commands.app.store`); the page (graft/static/app/) talks to
the JSON API of :mod:`graft.commands.app.routes` and the model routes. Security is graft serve's: the server answers
only Host names it was started for, every ``/api/*`` request carries the API key when one is set (the page and its
static files are open), a ``--host`` other than loopback needs a key or ``--no-auth``, and a path a client sends must
lie inside the project's folders.
"""
