#!/bin/sh
# Provisions a web server of the lab: nginx serving a page that names the
# server and a /health page, on its private address only, allowing the two
# LB nodes' private addresses and nothing else, logging $remote_addr (what
# the namespace lab's web servers do).
#
# Environment:
#   LB_WEB_NAME      page text and server name (web1)
#   LB_WEB_ADDRESS   address to listen on (10.200.0.21)
#   LB_ALLOW         LB private addresses, space separated
#   LB_ROOT          where to put the site and nginx config (default /, i.e.
#                    /etc/nginx and /var/www); tests stage it elsewhere
#   LB_NO_SERVICE=1  start nginx with the written config directly instead
#                    of through the system's nginx service (tests)
set -eu

name="${LB_WEB_NAME:?set LB_WEB_NAME (web1)}"
address="${LB_WEB_ADDRESS:?set LB_WEB_ADDRESS (10.200.0.21)}"
allow="${LB_ALLOW:?set LB_ALLOW (the LB private addresses)}"
root="${LB_ROOT:-/}"
root="${root%/}"

say() { echo "web.sh ($name): $*"; }

if ! command -v nginx >/dev/null 2>&1; then
    say "installing nginx-light"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light
fi

site="$root/var/www/lb-lab"
conf_dir="$root/etc/nginx"
mkdir -p "$site" "$conf_dir/sites-enabled" "$root/var/log/nginx" "$root/run"
echo "$name" > "$site/index.html"
echo "ok" > "$site/health"

allow_lines=""
for a in $allow; do
    allow_lines="$allow_lines        allow $a;
"
done

cat > "$conf_dir/sites-enabled/lb-lab" <<CONF
server {
    listen $address:80;
    root $site;
    access_log $root/var/log/nginx/lb-lab.access.log lb_lab;
    location / {
$allow_lines        deny all;
        add_header X-Backend $name;
    }
}
CONF
say "site for $address written to $conf_dir/sites-enabled/lb-lab"

if [ "${LB_NO_SERVICE:-0}" = 1 ]; then
    cat > "$conf_dir/lb-lab-nginx.conf" <<CONF
worker_processes 1;
pid $root/run/lb-lab-nginx.pid;
error_log $root/var/log/nginx/error.log;
events { worker_connections 256; }
http {
    log_format lb_lab '\$remote_addr "\$request" \$status';
    include $conf_dir/sites-enabled/lb-lab;
}
CONF
    nginx -c "$conf_dir/lb-lab-nginx.conf"
    say "nginx started with $conf_dir/lb-lab-nginx.conf"
else
    cat > "$conf_dir/conf.d/lb-lab-log.conf" 2>/dev/null <<'CONF' || true
log_format lb_lab '$remote_addr "$request" $status';
CONF
    rm -f "$conf_dir/sites-enabled/default"
    nginx -t
    systemctl enable nginx
    systemctl restart nginx
    say "nginx restarted"
fi
