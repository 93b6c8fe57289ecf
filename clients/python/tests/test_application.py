"""An application on Lethe end to end: `examples/shop.py` configured through the environment
as a user configures it, a follower over the subscription, snapshots, and forgetting."""

from __future__ import annotations

import os
import sys
import threading
from unittest import TestCase

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, InfrastructureFactory

import lethe_eventsourcing
from server import LetheServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import shop  # noqa: E402


class TestShop(TestCase):
    def setUp(self) -> None:
        self.server = LetheServer()
        self.env = {
            "PERSISTENCE_MODULE": "lethe_eventsourcing",
            "LETHE_URL": self.server.url,
            "LETHE_TOKEN": self.server.admin_token,
        }

    def tearDown(self) -> None:
        self.server.stop()

    def app(self, **env: str) -> shop.Shop:
        app = shop.Shop(env={**self.env, **env})
        self.addCleanup(app.close)
        return app

    def test_the_persistence_module_is_found_by_name(self) -> None:
        factory = InfrastructureFactory.construct(self.env)
        self.addCleanup(factory.close)
        self.assertIsInstance(factory, lethe_eventsourcing.Factory)

    def test_shop_remembers_and_forgets(self) -> None:
        app = self.app(IS_SNAPSHOTTING_ENABLED="y")
        shop.declare_schemas(app)
        alice = app.register("Alice", "alice@example.com")
        bob = app.register("Bob", "bob@example.com")
        app.rename(alice, "Alice B.")
        order = app.place_order(alice, ["book", "pen"])
        app.take_snapshot(alice)

        # A second process of the same application reads what the first recorded.
        other = self.app()
        self.assertEqual(other.customer(alice).name, "Alice B.")
        self.assertEqual(other.order(order).delivery_name, "Alice B.")
        self.assertEqual(app.snapshots.recorder.select_events(alice, desc=True, limit=1)[0].originator_version, 2)

        # Two processes changing one customer: the second save is a conflict.
        first, second = app.customer(bob), other.customer(bob)
        first.rename("Robert")
        second.rename("Bobby")
        app.save(first)
        with self.assertRaises(IntegrityError):
            other.save(second)

        # Notifications are this application's events in commit order.
        notifications = app.recorder.select_notifications(None, 100)
        self.assertEqual([n.topic.rsplit(".", 1)[-1] for n in notifications],
                         ["Registered", "Registered", "Renamed", "Placed", "Renamed"])
        self.assertEqual(app.recorder.max_notification_id(), notifications[-1].id)

        # Forgetting Alice: her customer aggregate and its snapshot are gone; the order stays,
        # with only her name erased in it; Bob is untouched.
        subject = app.customer(alice).subject
        shop.forget(app, subject)
        fresh = self.app(IS_SNAPSHOTTING_ENABLED="y")
        with self.assertRaises(AggregateNotFoundError):
            fresh.customer(alice)
        self.assertEqual(fresh.snapshots.recorder.select_events(alice), [])
        self.assertIsNone(fresh.order(order).delivery_name)
        self.assertEqual(fresh.order(order).items, ["book", "pen"])
        self.assertEqual(fresh.customer(bob).name, "Robert")

    def test_a_restarted_server_is_transparent(self) -> None:
        """A follower sees every event once, in order, across a restart: recorders reconnect
        (their keep-alive connections died with the server), and the subscription resumes
        with Last-Event-ID."""
        app = self.app()
        customer = app.register("Dan", "dan@example.com")
        received = []
        halfway, done = threading.Event(), threading.Event()

        def follow() -> None:
            with app.recorder.subscribe(gt=None) as subscription:
                for notification in subscription:
                    received.append(notification.id)
                    if len(received) == 6:
                        halfway.set()
                    if len(received) == 11:
                        done.set()
                        break

        follower = threading.Thread(target=follow)
        follower.start()
        for i in range(5):
            app.rename(customer, f"Dan {i}")
        self.assertTrue(halfway.wait(30), received)
        self.server.restart()
        for i in range(5, 10):
            app.rename(customer, f"Dan {i}")
        self.assertTrue(done.wait(60), received)
        follower.join(10)
        self.assertEqual(received, [n.id for n in app.recorder.select_notifications(None, 100)])
        self.assertEqual(app.customer(customer).name, "Dan 9")
