"""PyPI localstripe (1.15.10) with the two Stripe APIs the account page calls and localstripe
lacks: Checkout Sessions (POST /v1/checkout/sessions, subscription mode) and Billing Portal
sessions (POST /v1/billing_portal/sessions). They check what Stripe checks for these calls
(the customer exists, every price exists, the URLs are absolute), keep what they were given, and
answer with a `url` that this same server serves as a small page, so a browser test can follow
the redirect and read what was asked for. Everything else is localstripe's own.

    python3 tests/localstripe/serve.py --port 8420 --from-scratch
"""
import html
import sys

from aiohttp import web
from localstripe import server
from localstripe.errors import UserError
from localstripe.resources import Customer, Plan, StripeObject


def _base():
    port = "8420"
    if "--port" in sys.argv:
        port = sys.argv[sys.argv.index("--port") + 1]
    return "http://127.0.0.1:" + port


def _absolute(url):
    return isinstance(url, str) and (url.startswith("http://") or url.startswith("https://"))


class CheckoutSession(StripeObject):
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, mode=None, line_items=None, success_url=None, cancel_url=None, customer=None,
                 customer_email=None, client_reference_id=None, metadata=None, subscription_data=None,
                 **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        if mode != "subscription":
            raise UserError(400, "Only mode=subscription is supported here")
        if not _absolute(success_url) or (cancel_url is not None and not _absolute(cancel_url)):
            raise UserError(400, "success_url and cancel_url must be absolute URLs")
        if not isinstance(line_items, list) or not line_items:
            raise UserError(400, "line_items is required")
        for item in line_items:
            if not isinstance(item, dict) or "price" not in item:
                raise UserError(400, "every line item needs a price")
            Plan._api_retrieve(item["price"])  # 404 for a price Stripe does not know
        if customer is not None:
            Customer._api_retrieve(customer)
        super().__init__()
        self.mode = mode
        self.line_items = line_items
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.customer = customer
        self.customer_email = customer_email
        self.client_reference_id = client_reference_id
        self.metadata = metadata or {}
        self.subscription_data = subscription_data or {}
        self.status = "open"
        self.url = _base() + "/c/pay/" + self.id


class BillingPortalSession(StripeObject):
    object = "billing_portal.session"
    _id_prefix = "bps_"

    def __init__(self, customer=None, return_url=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        if customer is None:
            raise UserError(400, "customer is required")
        Customer._api_retrieve(customer)
        if return_url is not None and not _absolute(return_url):
            raise UserError(400, "return_url must be an absolute URL")
        super().__init__()
        self.customer = customer
        self.return_url = return_url
        self.url = _base() + "/p/session/" + self.id


def _page(title, rows):
    body = "".join("<tr><th>%s</th><td id='%s'>%s</td></tr>" % (html.escape(k), html.escape(k), html.escape(str(v)))
                   for k, v in rows)
    return web.Response(text="<!DOCTYPE html><title>%s</title><h1>%s</h1><table>%s</table>"
                        % (html.escape(title), html.escape(title), body), content_type="text/html")


def checkout_page(id):
    s = CheckoutSession._api_retrieve(id)
    return _page("localstripe Checkout", [
        ("session", s.id), ("price", ",".join(i["price"] for i in s.line_items)),
        ("customer", s.customer or ""), ("customer_email", s.customer_email or ""),
        ("client_reference_id", s.client_reference_id or ""),
        ("entitlements_customer_id", s.metadata.get("entitlements_customer_id", "")),
        ("success_url", s.success_url)])


def portal_page(id):
    s = BillingPortalSession._api_retrieve(id)
    return _page("localstripe Billing Portal", [("session", s.id), ("customer", s.customer), ("return_url", s.return_url or "")])


for cls, url in ((CheckoutSession, "/v1/checkout/sessions"), (BillingPortalSession, "/v1/billing_portal/sessions")):
    server.app.router.add_route("POST", url, server.api_create(cls, url))
    server.app.router.add_route("GET", url + "/{id}", server.api_retrieve(cls, url))


# The hosted pages (Stripe's checkout.stripe.com/c/pay/ID and billing.stripe.com/p/session/ID)
# are what a browser opens, without an API key: answered before localstripe's key check.
@web.middleware
async def hosted_pages(request, handler):
    for prefix, page in (("/c/pay/", checkout_page), ("/p/session/", portal_page)):
        if request.method == "GET" and request.path.startswith(prefix):
            try:
                return page(request.path[len(prefix):])
            except UserError as e:
                return e.to_response()
    return await handler(request)


server.app.middlewares.insert(0, hosted_pages)

if __name__ == "__main__":
    server.start()
