"""An `eventsourcing` application on Lethe: customers whose data can be forgotten.

- A customer is an aggregate whose stream is bound to the customer's data subject, so
  forgetting the subject shreds it (and its snapshots): the customer is then not found.
- An order is public (its id, items and customer reference survive), but the delivery name in
  it is personal data of the customer: a personal field, erased with the subject and nothing
  else of the order.

Run it against a server (`lethe serve`, admin token in lethe-data/admin.token):

    LETHE_URL=http://127.0.0.1:2113 LETHE_TOKEN=$(cat lethe-data/admin.token) \
        python examples/shop.py
"""

from __future__ import annotations

import os
import sys
import time
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event

from lethe_eventsourcing import declare_personal_fields


class Customer(Aggregate):
    @event("Registered")
    def __init__(self, subject: str, name: str, email: str) -> None:
        self.subject = subject
        self.name = name
        self.email = email

    @event("Renamed")
    def rename(self, name: str) -> None:
        self.name = name


class Order(Aggregate):
    @event("Placed")
    def __init__(self, customer_id: str, customer_subject: str, delivery_name: str, items: list[str]) -> None:
        self.customer_id = customer_id
        self.customer_subject = customer_subject
        self.delivery_name = delivery_name
        self.items = items


class Shop(Application[UUID]):
    def register(self, name: str, email: str) -> UUID:
        customer = Customer(subject=f"customer-{uuid4()}", name=name, email=email)
        # The customer's stream belongs to the customer's data subject.
        self.save(customer, subjects={customer.id: customer.subject})
        return customer.id

    def rename(self, customer_id: UUID, name: str) -> None:
        customer: Customer = self.repository.get(customer_id)
        customer.rename(name)
        self.save(customer)

    def place_order(self, customer_id: UUID, items: list[str]) -> UUID:
        customer: Customer = self.repository.get(customer_id)
        order = Order(
            customer_id=str(customer.id),
            customer_subject=customer.subject,
            delivery_name=customer.name,
            items=items,
        )
        self.save(order)
        return order.id

    def customer(self, customer_id: UUID) -> Customer:
        return self.repository.get(customer_id)

    def order(self, order_id: UUID) -> Order:
        return self.repository.get(order_id)


def declare_schemas(shop: Shop, admin_token: str | None = None) -> None:
    """The order's delivery name is personal data of the customer named in the same event."""
    declare_personal_fields(shop, Order.Placed, {"/delivery_name": "/customer_subject"}, token=admin_token)


def forget(shop: Shop, subject: str, admin_token: str | None = None) -> None:
    """Files an erasure request for `subject` and waits until its keys are destroyed (an admin
    operation; a data-protection officer would use `lethe admin forget` or the admin page)."""
    from lethe_eventsourcing._http import path

    base = shop.factory.transport
    transport = base.with_token(admin_token or base.token)
    request = transport.request(
        "POST",
        path("admin", "subjects", subject, "forget"),
        body={"reason": "Art. 17 request", "requested_by": "dpo@example.com"},
        ok=(202,),
        retry=False,
    ).body
    while request["status"] == "pending":
        time.sleep(0.05)
        request = transport.request("GET", path("admin", "erasures", request["request_id"])).body
    transport.close()


def main() -> None:
    os.environ.setdefault("PERSISTENCE_MODULE", "lethe_eventsourcing")
    shop = Shop()
    declare_schemas(shop)
    alice = shop.register("Alice", "alice@example.com")
    order = shop.place_order(alice, ["book"])
    print("order for", shop.order(order).delivery_name)
    forget(shop, shop.customer(alice).subject)
    try:
        shop.customer(alice)
    except AggregateNotFoundError:
        print("the customer is forgotten")
    print("the order keeps its items", shop.order(order).items, "and not the name:", shop.order(order).delivery_name)


if __name__ == "__main__":
    sys.exit(main())
