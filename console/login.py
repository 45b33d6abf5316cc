"""One-time login links for the admin, made by `manage.py loginlink`.

A link carries a signed, timestamped pair: the user's id and Django's password-reset
token for that user. The reset token hashes the user's password hash and last login, so
the link stops working as soon as it has been used (logging in changes last_login); the
signature's timestamp limits it to 15 minutes.
"""

from django.contrib.auth import get_user_model, login
from django.contrib.auth.tokens import default_token_generator
from django.core import signing
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.cache import never_cache

SALT = "symposium.login-link"
MAX_AGE = 15 * 60


def make_login_token(user):
    return signing.dumps([user.pk, default_token_generator.make_token(user)], salt=SALT)


@never_cache
def one_time_login(request, token):
    try:
        user_id, reset_token = signing.loads(token, salt=SALT, max_age=MAX_AGE)
    except (signing.BadSignature, ValueError, TypeError):
        return render(request, "login_link_invalid.html", status=403)
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None or not default_token_generator.check_token(user, reset_token):
        return render(request, "login_link_invalid.html", status=403)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponseRedirect("/admin/")
