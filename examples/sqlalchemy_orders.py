"""Orders with SQLAlchemy: an order and its task commit together, or neither exists.

The broker is PostgreSQL, in the application's own database, so ``app.transaction(session)``
makes the task a row written in the session's transaction (docs/transactions.md).

Place two orders (one is refused and rolls back):  python -m examples.sqlalchemy_orders
Ship the one that committed:                       celeriac -A examples.sqlalchemy_orders worker

``DATABASE_URL`` (SQLAlchemy's URL) and ``BROKER_URL`` (celeriac's) name another database;
both default to the database ``test`` on 127.0.0.1.
"""

from __future__ import annotations

import os

from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from celeriac import Celeriac

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKER_URL = os.environ.get("BROKER_URL", "postgresql://postgres@127.0.0.1:5432/test")

engine = create_engine(DATABASE_URL)
Session = sessionmaker(engine)
app = Celeriac("sqlalchemy_orders", broker=BROKER_URL, backend=BROKER_URL)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "sqlalchemy_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    shipped: Mapped[bool] = mapped_column(default=False)


class OutOfStockError(Exception):
    """The order is refused after it was written: its transaction rolls back."""


@app.task
def ship(order_id: int) -> str:
    """Runs only for an order that committed: it reads that order."""
    with Session.begin() as session:
        order = session.get_one(Order, order_id)
        order.shipped = True
        return f"shipped order {order.id}: {order.item}"


def place_order(item: str, *, in_stock: bool = True) -> tuple[int, str]:
    """The order and its ``ship`` task in one transaction; their ids."""
    with Session.begin() as session:
        order = Order(item=item)
        session.add(order)
        session.flush()  # the order's id, for the task
        with app.transaction(session):
            result = ship.delay(order.id)
        if not in_stock:
            raise OutOfStockError(item)
        return order.id, result.id


def main() -> None:
    Base.metadata.create_all(engine)
    order_id, task_id = place_order("teapot")
    print(f"order {order_id} committed: ship[{task_id}] is queued")
    try:
        place_order("unicorn", in_stock=False)
    except OutOfStockError:
        print("unicorn refused: rolled back, no order and no task")
    with Session() as session:
        print(f"{session.scalar(select(func.count()).select_from(Order))} order(s) in the database")
    app.close()


if __name__ == "__main__":
    main()
