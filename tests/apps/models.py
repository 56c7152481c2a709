"""Plain classes whose reprs look like ORM model instances (Django, SQLAlchemy, default)."""


class User:
    """Django-style repr: ``<User: name>``."""

    def __init__(self, pk: int, name: str) -> None:
        self.pk = pk
        self.name = name

    def __repr__(self) -> str:
        return f"<User: {self.name}>"


class Invoice:
    """SQLAlchemy-style repr: ``<Invoice(id=3, total=...)>``."""

    def __init__(self, id: int, total: float) -> None:
        self.id = id
        self.total = total

    def __repr__(self) -> str:
        return f"<Invoice(id={self.id}, total={self.total})>"


class Order:
    """Default ``object.__repr__``: ``<tests.apps.models.Order object at 0x...>``."""

    def __init__(self, pk: int) -> None:
        self.pk = pk
