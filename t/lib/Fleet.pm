# Configurations and measurements shared by the fleet tests (t/095-fleet.t with the module's
# native Redis locations, t/096-fleet-redis2.t with redis2 + HttpRedis): lua-resty-cache's
# documented /api location plus `set $cache_lease /redislease;` and the lease location.
package main;
use strict;
use warnings;

our $FLEET_VARIANT = $ENV{FLEET_VARIANT} // 'native';

# The whole server config of a fleet block; $extra goes into /api after the sets.
sub fleet_config {
    my $extra = shift // '';
    my $api = <<"_EOC_";
    location /api {
        set \$cache_lock srcache_locks;
        set \$cache_ttl /redisttl;
        set \$cache_persist /redispersist;
        set \$cache_lease /redislease;
        set \$cache_key "\$http_user_agent|\$uri";
        set \$cache_stale 100;
        set \$cache_lock_exptime 30;
        set \$cache_lock_timeout 10;
        $extra
        set_escape_uri \$escaped_key \$cache_key;
        stale_cache on;
        srcache_fetch_skip \$stale_cache_skip_fetch;
        srcache_fetch GET /redis \$cache_key;
        srcache_store PUT /redis2 key=\$escaped_key&exptime=105;
        add_header X-Stale-Cache \$stale_cache_status always;
        proxy_pass http://backend;
    }
_EOC_
    return $api . ($FLEET_VARIANT eq 'redis2' ? <<'_R2_' : redis_locations() . <<'_NATIVE_');
    location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query ttl $key; redis2_pass redis; }
    location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query persist $key; redis2_pass redis; }
    location = /redis { internal; stale_cache_role fetch; set_md5 $redis_key $args;
        redis_pass redis; }
    location = /redis2 { internal; stale_cache_role store;
        set_unescape_uri $exptime $arg_exptime; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query set $key $echo_request_body; redis2_query expire $key $exptime;
        redis2_pass redis; }
    location = /redislease { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query eval $stale_cache_lease_script 2 $key $key:lease $arg_op $arg_token $arg_ms;
        redis2_pass redis; }
_R2_
    location = /redislease { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        stale_cache_redis_pass redis;
        stale_cache_redis_command EVAL $stale_cache_lease_script 2 $key $key:lease
                                  $arg_op $arg_token $arg_ms; }
_NATIVE_
}

# The answer times logged by fleet_config('access_log logs/t.log t;') with fleet_log_format():
# [{ node, msec, status }] of every node.
sub fleet_log_format { "    log_format t '\$msec \$stale_cache_status';\n" }
sub answer_times {
    my @out;
    for my $i (@_) {
        open my $fh, '<', node_prefix($i) . '/logs/t.log' or next;
        while (<$fh>) {
            my ($t, $s) = split;
            push @out, { node => $i, msec => $t, status => $s };
        }
    }
    return @out;
}

# The lease key of a request under that configuration.
sub lease_key { redis_key(@_) . ':lease' }

# Percentile $p (0..100) of a list of numbers.
sub pct {
    my ($p, @v) = @_;
    @v = sort { $a <=> $b } @v;
    return undef unless @v;
    my $i = int($p / 100 * $#v + 0.999);
    return $v[$i > $#v ? $#v : $i];
}


# A lease location whose Redis never answers (nothing listens on port 1).
sub broken_lease_location {
    return $FLEET_VARIANT eq 'redis2'
      ? "    location = /brokenlease { internal; redis2_query eval \$stale_cache_lease_script 0;\n"
      . "        redis2_pass 127.0.0.1:1; }\n"
      : "    location = /brokenlease { internal; stale_cache_redis_pass 127.0.0.1:1;\n"
      . "        stale_cache_redis_command EVAL \$stale_cache_lease_script 0; }\n";
}

# No node logged an alert, an emergency or a crashed worker.
sub nodes_clean {
    my @nodes = @_;
    for my $i (@nodes) {
        my @bad = grep { /\[(alert|emerg)\]|exited on signal/ } split /\n/, node_log_text($i);
        Test::More::is(scalar(@bad), 0, "node $i: no alert, emerg or crash") or Test::More::diag(join "\n", @bad[0 .. ($#bad > 4 ? 4 : $#bad)]);
    }
}

1;
